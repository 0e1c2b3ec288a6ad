"""`accordion prepare-model`: make a Hugging Face Qwen2.5 / Qwen3 / Llama folder trainable by this project.

Adds the format tokens (`<think>`, `<step>`, budgets: one id each, kept by decoding), grows the embeddings
(new rows at the mean of the old), installs the chat template the generator and learner prompt with, and
checks the result: each tag one id, a step trace surviving encode/decode, and (unless --no-check-vllm) the
project's vLLM generator serving it. Then `model.path=OUT` trains it. `--untie-embeddings` gives a tied LM head
its own weights, for policy mode with a weighted budget choice (`models.prepare` says why).

    accordion prepare-model --base Qwen2.5-0.5B-Instruct --out runs/qwen-prepared
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

# The engine only has to start and decode a few tokens: a short context and a KV cache of a few blocks.
CHECK_TOKENS = 8
CHECK_QUESTION = "Sam has 3 apples and buys 4 more. How many apples does Sam have?"


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True,
                        help="Hugging Face model folder (config.json, weights, tokenizer)")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the prepared model")
    parser.add_argument("--untie-embeddings", action="store_true",
                        help="give a tied LM head (Qwen2.5 <= 3B, Qwen3 <= 4B) its own copy of the embeddings, so "
                             "that a weighted budget choice (learner.choice_weight > 1) does not move the budget "
                             "tokens' input embeddings")
    parser.add_argument("--no-check-vllm", action="store_true",
                        help="skip starting a vLLM engine on the result (30-70 s on CPU, longer for large models)")
    args = parser.parse_args(argv)

    from models.prepare import PrepareError, prepare_model

    try:
        prepared = prepare_model(args.base, args.out, untie=args.untie_embeddings)
    except PrepareError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    p = prepared
    output = "untied here" if p.untied else "tied" if p.tied else "untied"
    print(f"wrote {p.out}: {p.architecture}, {len(p.added)} format tokens added ({' '.join(p.added) or 'none'}), "
          f"embedding rows {p.rows_before} -> {p.rows_after} ({output} output), "
          f"{p.style} chat template; each format token is one id")
    if args.no_check_vllm:
        return 0
    from actors.generator import ModelFolderError

    print(f"starting vLLM on {p.out} to check that it serves the result (--no-check-vllm skips this)", flush=True)
    try:
        text, ids = asyncio.run(check_vllm(p.out))
    except ModelFolderError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"vLLM serves {p.out}: generated {len(ids)} tokens {text!r}")
    return 0


async def check_vllm(path: Path) -> tuple[str, list[int]]:
    """Start the project's generator on `path` and decode a few tokens of an Unfold rollout."""
    from actors.fold import RolloutRequest
    from actors.generator import Generator, ModelFolderError
    from configs.schema import GeneratorConfig

    cfg = GeneratorConfig(max_tokens=CHECK_TOKENS, segment_tokens=CHECK_TOKENS, max_prompt_tokens=120,
                          max_model_len=128, kv_cache_tokens=256, max_num_seqs=1, max_concurrent=1, temperature=0.0)
    generator = Generator(path, cfg)
    try:
        [trajectory] = await generator.rollout([RolloutRequest("check", CHECK_QUESTION, "unfold", 100)])
    finally:
        await generator.shutdown()
    ids = [i for s in trajectory.segments for i in s.response_ids]
    if not ids:
        raise ModelFolderError(f"{path}: vLLM started but generated no tokens ({trajectory.reason})")
    return "".join(s.text for s in trajectory.segments), ids
