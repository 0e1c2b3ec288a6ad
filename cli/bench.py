"""`accordion bench <name>`: the benchmarks, one module each with `main(argv, prog)`."""
from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv, prog), one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "fold": ("actors.bench_fold", "Fold vs Unfold generation throughput at one KV-cache budget"),
    "sync": ("cluster.bench_sync", "bucketed vs per-tensor weight sync, learner -> generator, ~100 M params"),
    "async": ("cluster.bench_async", "the RL loop synchronous vs asynchronous (max_staleness), trajectories/s"),
    "sft": ("learners.bench_sft", "tokens/s of the SFT training step (1 and 2 DeepSpeed ranks) vs a bare PyTorch loop"),
}


def main(argv: list[str], prog: str) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        width = max(map(len, BENCHES))
        print(f"usage: {prog} <benchmark> [options]\n\nbenchmarks:")
        print("\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in BENCHES.items()))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{prog}: unknown benchmark {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:], prog=f"{prog} {argv[0]}") or 0
