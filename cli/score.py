"""`accordion score --in FILE.jsonl --out FILE.jsonl`: check answers and compute rewards, line by line.

Each input line is a JSON object with `response` and `answer` (optional: budget, ref_len, mode,
status, reasoning_tokens, chosen; see `rewards.scorer`). Each output line is the input plus pred,
correct, reward, control_reward, components, status, timed_out and check_s. Output is written chunk by
chunk, so an interrupted run keeps what it scored. A bad line is reported with its number and
skipped, or, with `--strict`, ends the run before anything is scored. The summary goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from configs import add_config_arguments, config_from_args
from tasks.files import DataFileError, read_jsonl


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="src", required=True, type=Path, help="input JSONL")
    parser.add_argument("--out", required=True, type=Path, help="output JSONL (overwritten)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    parser.add_argument("--chunk", type=int, default=256, help="lines scored per batch (default: %(default)s)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args).reward
    if not args.src.is_file():  # now, not after the verifier processes have started
        raise FileNotFoundError(f"{args.src}: input file not found")
    if args.out.resolve() == args.src.resolve():
        raise DataFileError(f"{args.out}: output would overwrite the input")

    from tqdm import tqdm

    from rewards.scorer import Scorer

    counts = {"skipped": 0, "correct": 0, "timeouts": 0}

    def skip(err: DataFileError) -> None:
        print(f"{err} (skipped)", file=sys.stderr)
        counts["skipped"] += 1

    reward_sum = 0.0
    start = time.perf_counter()
    with Scorer(cfg) as scorer:
        items = read_jsonl(args.src, check=scorer.validate, skip=None if args.strict else skip)
        with open(args.out, "w", encoding="utf-8") as out, \
                tqdm(total=len(items), unit="line", file=sys.stderr, disable=None) as bar:
            for first in range(0, len(items), args.chunk):
                chunk = items[first:first + args.chunk]
                for item in scorer.score(chunk):
                    out.write(json.dumps(item, ensure_ascii=False) + "\n")
                    counts["correct"] += item["correct"]
                    counts["timeouts"] += item["timed_out"]
                    reward_sum += item["reward"]
                out.flush()
                bar.update(len(chunk))
        stats = scorer.stats()
    seconds = time.perf_counter() - start
    n = len(items)
    print(f"{prog}: {n} lines scored, {counts['skipped']} skipped: accuracy {counts['correct'] / max(n, 1):.1%}, "
          f"mean reward {reward_sum / max(n, 1):.3f}, timeouts {counts['timeouts']}, crashes {stats['crashes']}, "
          f"slowest check {stats['max_call_s']:.2f}s (limit {cfg.timeout_s:g}s), {n / seconds:.0f} lines/s",
          file=sys.stderr)
    return 0
