"""`accordion data`: a task's worked solutions as a step-trace JSONL, the cold-start data for SFT.

    accordion data gsm8k --out runs/gsm8k_sft.jsonl          GSM8K's 7,473 training solutions as step traces
    accordion data arithmetic --out runs/traces.jsonl        the built-in task's gold traces

No LLM rewrites anything: GSM8K's solutions already come one calculation per line, so each line becomes a
step whose summary carries the quantity it found (`<<48/2=24>>24 clips in May.` -> `24 clips in May.`)
and the final `#### 72` becomes `\\boxed{72}`. Other sets (MATH) need a user's own rewriter into the same
shape: one JSON object per line with `question`, `answer` and a `response` in the step format (README,
"Cold start on real data"). `accordion sft --data F.jsonl` trains on any such file; `accordion compress
apply` turns it into mixed-ratio data.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from configs import add_config_arguments, config_from_args

SETS = ("gsm8k", "arithmetic")


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", choices=SETS, help="whose solutions (gsm8k: read from task.data_dir)")
    parser.add_argument("--out", type=Path, required=True, help="step-trace JSONL to write")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--limit", type=int, help="at most this many traces")
    add_config_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may follow options, after the set's name
    cfg = config_from_args(args)

    from tasks.dataset import step_traces
    from tasks.format import STEP_CLOSE
    from tasks.files import write_jsonl

    task = cfg.task.model_copy(update={"name": args.set})
    records = step_traces(task, args.split)[:args.limit]
    steps = sum(r["response"].count(STEP_CLOSE) for r in records)
    print(f"{write_jsonl(args.out, records)}: {len(records)} {args.set} {args.split} step traces, "
          f"{steps / max(len(records), 1):.1f} steps each on average")
    return 0
