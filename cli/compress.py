"""`accordion compress`: Extra-CoT's compressor, from full step traces to mixed-ratio SFT data.

    accordion compress label  --data traces.jsonl --out labels.jsonl    keep spans by rule (weak baseline)
    accordion compress train  --data builtin|labels.jsonl --out DIR     train the token classifier (resumable)
    accordion compress apply  --model DIR --data traces.jsonl --out sft.jsonl   each trace at 100 % and compressed
    accordion compress bench  --model DIR --out F.json      keep F1 per ratio, within-band and parse rates

Step traces come from `accordion data gsm8k|arithmetic --out traces.jsonl`; `accordion sft sft.data=sft.jsonl`
(or `accordion train ... sft.data=sft.jsonl`) then trains on the output.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress.spans import RATIOS
from configs import add_config_arguments, config_from_args
from configs.schema import Config


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    label = commands.add_parser("label", help="keep spans of step traces by rule: summaries, equations, numbers")
    label.add_argument("--data", type=Path, required=True, help="step-trace JSONL (`accordion data`)")
    train = commands.add_parser("train", help="train the compressor (resumes from --out; MLflow in --out/mlflow.db)")
    train.add_argument("--data", required=True, help="`builtin` (the task's gold levels) or a keep-spans JSONL")
    apply = commands.add_parser("apply", help="each trace at 100 %% and at every ratio, kept within the band")
    apply.add_argument("--data", type=Path, required=True, help="step-trace JSONL (`accordion data`)")
    apply.add_argument("--ratios", type=int, nargs="+", choices=RATIOS, default=list(RATIOS), metavar="RATIO",
                       help=f"target ratios in %% (of {', '.join(map(str, RATIOS))}; default: all)")
    bench = commands.add_parser("bench", help="keep F1 against held-out labels, within-band and parse rates")
    bench.add_argument("--data", default="builtin", help="`builtin` (default) or a keep-spans JSONL, all held out")
    for command in (apply, bench):
        command.add_argument("--model", type=Path, required=True, help="compressor folder (`compress train --out`)")
    for command in (label, train, apply, bench):
        command.add_argument("--out", type=Path, required=True)
        add_config_arguments(command)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    return {"label": write_labels, "train": train_compressor, "apply": apply_compressor,
            "bench": bench_compressor}[args.command](args, cfg)


def write_labels(args: argparse.Namespace, cfg: Config) -> int:
    from compress.labels import rule_spans
    from compress.spans import read_trace
    from tasks.dataset import read_traces
    from tasks.files import write_jsonl

    rows = [{"question": r["question"], "response": r["response"], "keep": rule_spans(read_trace(r["response"]))}
            for r in read_traces(args.data)]
    print(f"{write_jsonl(args.out, rows)}: keep spans of {len(rows)} traces (rule: summaries, equations, numbers)")
    return 0


def examples(data: str, cfg: Config, split: str):
    """Labelled examples: the built-in task's `split`, or a keep-spans file (whose last
    `compress.eval_traces` are the held-out `eval` split, unless `split` is None: all of it)."""
    from compress.labels import builtin_examples, span_examples

    c = cfg.compress
    if data == "builtin":
        return builtin_examples(cfg.task, split or "eval", c.train_traces if split == "train" else c.eval_traces)
    rows = span_examples(data)
    if split is None:
        return rows
    if len(rows) <= c.eval_traces:
        raise ValueError(f"{data}: {len(rows)} labelled traces; need more than compress.eval_traces={c.eval_traces}")
    return rows[:-c.eval_traces] if split == "train" else rows[-c.eval_traces:]


def train_compressor(args: argparse.Namespace, cfg: Config) -> int:
    from cluster.tracking import Tracker, tracking_uri
    from compress.model import STATE, Compressor, train

    out: Path = args.out
    train_set, held_out = examples(args.data, cfg, "train"), examples(args.data, cfg, "eval")
    resumed = (out / STATE).is_file()
    state = json.loads((out / STATE).read_text()) if resumed else {}
    if resumed:
        compressor = Compressor.load(out)
        print(f"compress train: resuming {out} at step {state['step']}")
    else:
        corpus = [text for e in train_set + held_out for text in (e.question, e.trace.response)]
        compressor = Compressor.build(cfg.compress, corpus)
    tracker = Tracker({**cfg.compress.model_dump(), "data": args.data, "traces": len(train_set)},
                      tracking_uri(cfg.tracking.uri, out), cfg.tracking.experiment, state.get("mlflow_run_id"),
                      f"{cfg.tracking.run_name}-compressor" if cfg.tracking.run_name else "compressor")
    status = "FAILED"
    try:
        start = time.perf_counter()
        state = train(compressor, cfg.compress, train_set, held_out, out, tracker.log, {"mlflow_run_id": tracker.run_id})
        figures = state["eval"] | {"train_s": round(time.perf_counter() - start, 1), "precision": "fp32"}
        (out / "metrics.json").write_text(json.dumps(figures, indent=1) + "\n")
        tracker.artifact(out / "metrics.json")
        print(f"held-out ({figures['traces']} traces): keep F1 " +
              ", ".join(f"{r}% {f:.3f}" for r, f in figures["f1"].items()) +
              f"; within ±{cfg.compress.band} {figures['within_band']:.1%}; parse {figures['parse_ok']:.1%}\ncompressor: {out}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\ncompress train: interrupted; {out} holds the last checkpoint; the same command resumes it")
        return 130
    finally:
        tracker.close(status)
    return 0


def apply_compressor(args: argparse.Namespace, cfg: Config) -> int:
    from compress.model import Compressor, compress_records
    from tasks.dataset import read_traces
    from tasks.files import write_jsonl
    from tasks.format import count_tokens

    compressor = Compressor.load(args.model)
    records = read_traces(args.data)
    start = time.perf_counter()
    rows, tally = compress_records(compressor, records, args.ratios, cfg.compress.band)
    seconds = time.perf_counter() - start
    write_jsonl(args.out, rows)
    tokens = sum(count_tokens(r["response"]) for r in records)
    print(f"{len(records)} traces in {seconds:.1f} s ({tokens / seconds:,.0f} tokens/s, fp32, {compressor.device}); "
          f"kept within ±{cfg.compress.band} of the target ratio:")
    for r, (kept, dropped) in tally.items():
        print(f"  {r:3d}%: {kept} kept, {dropped} dropped")
    print(f"{args.out}: {len(rows)} step traces (the {len(records)} full ones tagged <COMP_100>)")
    return 0


def bench_compressor(args: argparse.Namespace, cfg: Config) -> int:
    from compress.model import Compressor, evaluate
    from models.precision import machine

    compressor = Compressor.load(args.model)
    held_out = examples(args.data, cfg, "eval" if args.data == "builtin" else None)
    start = time.perf_counter()
    figures = evaluate(compressor, held_out, cfg.compress.band, desc="scoring")
    seconds = time.perf_counter() - start
    figures |= {"traces_per_s": round(len(held_out) / seconds, 1), "precision": "fp32", "cpu": machine(),
                "data": args.data}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0
