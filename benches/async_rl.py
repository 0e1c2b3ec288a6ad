"""`accordion bench async`: the RL loop synchronous (`rl.max_staleness: 0`) vs asynchronous, back to back.

Both arms run the same config for the same number of steps (so the same number of trained trajectories)
in this process, each in a fresh run folder: `Trainer.start` (engine start and actor set-up are not
timed), then `Trainer.run` timed, then shutdown. Throughput = trajectories trained / seconds of training:
`run`'s less its end-of-run evaluation (`perf/eval_s`), 1-2 s in either arm that would pull the ratio towards 1
(the last checkpoint stays in). `ratio_with_eval` keeps it in.

One pair of arms moved by 0.12 between runs on a quiet machine, so `--pairs` (default 2) runs them in the order
sync, async, async, sync, ... (drift cancels) and the figure pools every pair; `pairs` lists each pair's ratio.

Default config: 1 learner rank and 1 generator, 1 CPU each (the engine pinned to the last core:
`generator.cpu_ids`), the config's model untrained (`model.*`; a `model.path` is used as it is),
Unfold rollouts of up to `--tokens` tokens, `--prompts` x 4 per step. Asynchrony can only help when
generation and training take comparable time and run on different cores. Decoding a batch costs about the
same for 16 or 32 sequences of a tiny model while training cost grows with them, so `--prompts` balances the
two (`perf/wait_for_rollouts_s` vs `train/time_s` in the arms' MLflow runs tells you which side waits).
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from benches import bench_parser, figure, report
from configs import config_from_args


def main(argv: list[str], prog: str) -> int:
    parser = bench_parser(prog, __doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--staleness", type=int, default=2, help="rl.max_staleness of the async arm")
    parser.add_argument("--tokens", type=int, default=128, help="generator.max_tokens (Unfold)")
    parser.add_argument("--prompts", type=int, default=8, help="rl.prompts_per_step (4 samples each)")
    parser.add_argument("--pairs", type=int, default=2, help="sync/async pairs, pooled (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: at least 1")
    cfg = config_from_args(args)

    import ray

    from models.build import resolve_model

    work = Path(tempfile.mkdtemp(prefix="bench-async-"))
    model = resolve_model(cfg.model, work)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"),
                 runtime_env={"env_vars": {"VLLM_CACHE_ROOT": str(work / "vllm")}})
    base = {"model.path": model, "rl.steps": args.steps, "rl.mode": "unfold", "rl.budgets": [], "reward.name": "accordion",
            "eval.every": 0, "eval.questions": 2, "eval.samples": 1, "eval.budgets": [], "eval.harder_steps": "null",
            "rl.save_every": args.steps, "rl.prompts_per_step": args.prompts, "rl.samples_per_prompt": 4,
            "generator.max_tokens": args.tokens, "generator.max_model_len": 512, "generator.max_prompt_tokens": 256,
            "generator.segment_tokens": min(args.tokens, 256), "cluster.learners": 1, "cluster.learner_cpus": 1,
            "cluster.generators": 1, "cluster.generator_cpus": 1, "reward.processes": 1}
    if (os.cpu_count() or 1) > 1:
        base["generator.cpu_ids"] = [os.cpu_count() - 1]  # keep the engine's busy-polling off the learner's core
    result: dict = {"settings": {**{k: str(v) for k, v in base.items()}, "overrides": args.overrides}}
    arms = {"sync": 0, "async": args.staleness}
    pairs: list[dict] = []
    for pair in range(args.pairs):
        runs = {}
        for arm in arm_order(list(arms), pair):
            run_dir = work / f"{arm}-{pair}"
            overrides = [f"{k}={v}" for k, v in {**base, "rl.max_staleness": arms[arm], "run_dir": run_dir}.items()]
            run_s, eval_s, trained, precision = asyncio.run(timed_run([*overrides, *args.overrides], args.config))
            runs[arm] = {"trained": trained, "train_s": run_s - eval_s, "run_s": run_s, "eval_s": eval_s}
            print(f"pair {pair + 1}/{args.pairs}, {arm:<5} (max_staleness {arms[arm]}): {trained} trajectories in "
                  f"{runs[arm]['train_s']:.1f} s of training = {rate(runs[arm]):.2f}/s (the run {run_s:.1f} s with its "
                  f"last evaluation)", flush=True)
        pairs.append({**runs, "ratio": rate(runs["async"]) / rate(runs["sync"])})
    result |= pool(pairs)
    result["settings"]["async_max_staleness"] = args.staleness
    spread = ", ".join(f"{p['ratio']:.2f}" for p in pairs)
    rates = figure(f"trained samples/s, async (max_staleness {args.staleness}) vs sync, {args.pairs} pairs pooled "
                   f"(each: {spread})", result["async_samples_per_s"], result["sync_samples_per_s"],
                   ">= 1.9 (at most 2)")
    report(args.out, result, [rates], f"learner {precision['learner']}, generator {precision['generator']}")
    return 0


def arm_order(arms: list[str], pair: int) -> list[str]:
    """sync, async, then async, sync, ...: a drift of the machine over the run weighs on both arms alike."""
    return arms if pair % 2 == 0 else arms[::-1]


def rate(run: dict) -> float:
    return run["trained"] / run["train_s"]


def pool(pairs: list[dict]) -> dict:
    """Both arms over every pair: trained samples/s = all trajectories / all seconds of training (not a mean of
    the pairs' ratios), the seconds summed, `ratio` and `ratio_with_eval` (the same trajectories in either arm)."""
    result = {}
    for arm in ("sync", "async"):
        pooled = {key: sum(p[arm][key] for p in pairs) for key in ("trained", "train_s", "run_s", "eval_s")}
        result |= {f"{arm}_samples_per_s": rate(pooled),
                   **{f"{arm}_{key}": pooled[key] for key in ("train_s", "run_s", "eval_s")}}
    return result | {"ratio": result["async_samples_per_s"] / result["sync_samples_per_s"],
                     "ratio_with_eval": result["sync_run_s"] / result["async_run_s"], "pairs": pairs}


async def timed_run(overrides: list[str], config: str | None) -> tuple[float, float, int, dict]:
    """Seconds in `run`, seconds of its last evaluation, trajectories trained, precision."""
    from cluster.run_dir import prepare_run
    from cluster.train import Trainer

    cfg, run_dir, state = prepare_run(config, overrides, None)
    trainer = await Trainer.start(cfg, run_dir, state)
    try:
        start = time.perf_counter()
        await trainer.run()
        seconds = time.perf_counter() - start
    finally:
        await trainer.shutdown()
    eval_s = trainer.history["perf/eval_s"][trainer.step]
    return seconds, eval_s, len(trainer.trained_indices) * cfg.rl.samples_per_prompt, trainer.precision
