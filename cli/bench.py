"""`accordion bench <name>`: the benchmarks (`benches/`, one module each with `main(argv, prog)`), and
`accordion bench all`, which runs every one of them and writes one table of their figures."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> (module with main(argv, prog), one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "fold": ("benches.fold", "Fold vs Unfold generation throughput at one KV-cache budget, 2k/4k/8k-token traces"),
    "sync": ("benches.sync", "bucketed vs per-tensor weight sync, learner -> generator, and its share of an RL step"),
    "async": ("benches.async_rl", "the RL loop synchronous vs asynchronous (max_staleness), trained samples/s"),
    "sft": ("benches.sft", "tokens/s of the SFT training step (1 and 2 DeepSpeed ranks) vs a bare PyTorch loop"),
    "reward": ("benches.reward", "answer checks/s under a hard timeout, ordinary and adversarial answers"),
    "trl": ("benches.trl", "the same RL job under TRL's GRPOTrainer and under accordion train"),
}
# Packages outside the project's own dependencies that a benchmark needs: name -> (package, how to install it).
NEEDS = {"trl": ("trl", "pip install -e '.[bench]'")}
# What `bench all` adds to a benchmark's defaults: sync is about a 95 M-parameter model, not the demo's 0.9 M.
SUITE_ARGS = {"sync": ["model.hidden_size=768", "model.num_layers=14", "model.num_heads=12", "model.num_kv_heads=3",
                       "model.intermediate_size=2304"]}
TABLE = {"bench": "benchmark", "figure": "figure", "ours": "ours", "baseline": "peer/baseline", "ratio": "ratio",
         "target": "target", "precision": "precision", "cpu": "CPU capability", "date": "date"}


def main(argv: list[str], prog: str) -> int:
    if argv and argv[0] == "all":
        return run_all(argv[1:], f"{prog} all")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        width = max(map(len, BENCHES))
        print(f"usage: {prog} <benchmark> [options]\n\nbenchmarks:")
        print("\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in BENCHES.items()))
        print(f"  {'all':<{width}}  every benchmark in turn: one JSON and one markdown table (make bench)")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{prog}: unknown benchmark {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:], prog=f"{prog} {argv[0]}") or 0


def run_all(argv: list[str], prog: str) -> int:
    """Each benchmark in its own process (a fresh Ray and fresh engines each), with its default settings, the
    config and the overrides. The JSON and the table are rewritten after each, so a stopped run keeps its figures."""
    from configs import add_config_arguments

    parser = argparse.ArgumentParser(prog=prog, description="Run every benchmark; figures are throughputs, so on a "
                                     "quiet machine. Writes OUT (every result under its name) and OUT with .md.")
    parser.add_argument("--out", type=Path, default=Path("benches/results.json"), help="(default: %(default)s)")
    parser.add_argument("--only", type=lambda names: names.split(","), default=list(BENCHES),
                        help=f"comma-separated benchmarks (default: {','.join(BENCHES)})")
    parser.add_argument("--demo", type=Path, help="a finished `make demo` run folder: fold adds a row of its last "
                        "checkpoint's real rollouts, and trl starts both arms from its SFT checkpoint instead of a cold "
                        "start of its own (~5 min); `make bench` passes runs/demo once the demo ran")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in BENCHES]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}")
    demo = demo_args(args.demo, parser) if args.demo else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            reason = unavailable(name)
            if reason:
                results[name] = {"skipped": reason}
            else:
                print(f"\n=== {prog}: {name}", flush=True)
                cmd = [sys.executable, "-m", "cli", "bench", name, *SUITE_ARGS.get(name, []), *demo.get(name, []),
                       *args.overrides, "--config", args.config, "--out", str(out)]
                status = subprocess.run(cmd).returncode
                results[name] = json.loads(out.read_text()) if status == 0 else {"failed": f"exit status {status}"}
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(table(results) + "\n")
    print(f"\n{table(results)}\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return 1 if any("failed" in r for r in results.values()) else 0


def demo_args(run_dir: Path, parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """What a finished demo run gives the benchmarks: its last RL checkpoint (fold's real row) and its SFT
    checkpoint (trl's starting model, the cold start `bench trl` would otherwise repeat)."""
    sft = run_dir / "sft" / "checkpoint"
    if not (run_dir / "state.json").is_file() or not (sft / "config.json").is_file():
        parser.error(f"--demo {run_dir}: not a finished demo run (no state.json or no sft/checkpoint)")
    return {"fold": ["--real-model", str(run_dir)], "trl": ["--model", str(sft)]}


def unavailable(name: str) -> str | None:
    """Why benchmark `name` cannot run here, or None."""
    module = BENCHES[name][0]
    if importlib.util.find_spec(module) is None:
        return f"{module} not found"
    package, install = NEEDS.get(name, (None, ""))
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed ({install})"
    return None


def table(results: dict[str, dict]) -> str:
    """One markdown row per figure of every benchmark; a skipped or failed one gets a row saying why."""
    from benches import markdown

    rows = []
    for name, result in results.items():
        run = {"bench": name, "precision": result.get("precision"), "cpu": result.get("cpu"),
               "date": result.get("date", "")[:16]}
        why = next((f"{key}: {result[key]}" for key in ("skipped", "failed") if key in result), None)
        figures = [{"figure": why}] if why else result.get("figures") or [{"figure": "no figures (see the JSON)"}]
        rows += [{**run, **f} for f in figures]
    return markdown(rows, TABLE)
