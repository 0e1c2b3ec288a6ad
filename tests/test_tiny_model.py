import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.schema import ModelConfig, TaskConfig
from models.build import build_tiny_model
from models.tokenizer import SPECIAL_TOKENS
from tasks.arithmetic import gold_trace, lax_steps, problems
from tasks.format import BUDGETS, FORMAT_TOKENS, budget_prompt, count_tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(ModelConfig(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1),
                            tmp_path_factory.mktemp("tiny"))


def test_each_special_and_format_token_is_one_id(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok.encode(t, add_special_tokens=False) for t in (*SPECIAL_TOKENS, *FORMAT_TOKENS)]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(ids)


def test_task_text_tokenizes_without_unknowns_and_counts_agree(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    format_ids = set(tok.convert_tokens_to_ids(list(FORMAT_TOKENS)))
    for p in problems(TaskConfig(min_steps=1, max_steps=12, eval_size=50), "eval"):
        for budget in (None, *BUDGETS):
            trace = gold_trace(p, lax_steps(p, 0.5, 0), budget or 100, budget)
            prompt = tok.apply_chat_template([{"role": "user", "content": budget_prompt(p.question, budget)}],
                                             add_generation_prompt=True, return_dict=False)
            ids = tok.encode(trace, add_special_tokens=False)
            assert tok.unk_token_id not in prompt + ids
            assert len([i for i in ids if i not in format_ids]) == count_tokens(trace)
            # Decoding and encoding again gives the same ids (the text differs only in spaces before tags).
            assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids


def test_transformers_loads_and_generates(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    assert model.config.model_type == "qwen3" and params < 20e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "x = 3 . op 1 : + 4 . what is x ?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 8 or tok.eos_token_id in out[0].tolist()


def test_default_size_is_within_two_to_twenty_million(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(ModelConfig(), tmp_path))
    assert 2e6 <= sum(p.numel() for p in model.parameters()) <= 20e6
