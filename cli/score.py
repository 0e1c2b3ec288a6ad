"""`accordion score --in FILE.jsonl --out FILE.jsonl`: check answers and compute rewards, line by line.

Each input line is a JSON object with `response` and `answer` (optional: budget, ref_len, mode,
status, reasoning_tokens, chosen; see `rewards.scorer`). Each output line is the input plus pred,
correct, reward, control_reward, components, status, timed_out and check_s. Output is written chunk by
chunk, so an interrupted run keeps what it scored. A bad line is reported with its number and
skipped, or ends the run with `--strict`. The summary goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from configs import add_config_arguments, config_from_args
from tasks.benchmarks import DataFileError


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
    if not args.src.is_file():
        raise FileNotFoundError(f"{args.src}: input file not found")
    if args.out.resolve() == args.src.resolve():
        raise DataFileError(f"{args.out}: output would overwrite the input")

    from tqdm import tqdm

    from rewards.scorer import Scorer

    with open(args.src, encoding="utf-8") as f:
        total = sum(1 for _ in f)
    counts = {"scored": 0, "skipped": 0, "correct": 0, "timeouts": 0}
    reward_sum = 0.0
    start = time.perf_counter()
    with Scorer(cfg) as scorer, open(args.out, "w", encoding="utf-8") as out, \
            tqdm(total=total, unit="line", file=sys.stderr, disable=None) as bar:
        for chunk in _chunks(_read(args.src, scorer, args.strict, counts), args.chunk):
            for item in scorer.score(chunk):
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
                counts["correct"] += item["correct"]
                counts["timeouts"] += item["timed_out"]
                reward_sum += item["reward"]
            out.flush()
            counts["scored"] += len(chunk)
            bar.update(len(chunk))
        stats = scorer.stats()
    seconds = time.perf_counter() - start
    n = counts["scored"]
    print(f"{prog}: {n} lines scored, {counts['skipped']} skipped: accuracy {counts['correct'] / max(n, 1):.1%}, "
          f"mean reward {reward_sum / max(n, 1):.3f}, timeouts {counts['timeouts']}, crashes {stats['crashes']}, "
          f"slowest check {stats['max_call_s']:.2f}s (limit {cfg.timeout_s:g}s), {n / seconds:.0f} lines/s",
          file=sys.stderr)
    return 0


def _read(path: Path, scorer, strict: bool, counts: dict[str, int]) -> Iterator[dict]:
    """Valid items of `path`; a bad line is reported with its number (and skipped unless `strict`)."""
    from rewards.scorer import ItemError

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                scorer.validate(item)
            except (json.JSONDecodeError, ItemError) as err:
                problem = f"malformed JSON ({err.msg})" if isinstance(err, json.JSONDecodeError) else str(err)
                if strict:
                    raise DataFileError(f"{path}:{number}: {problem}") from None
                print(f"{path}:{number}: {problem} (skipped)", file=sys.stderr)
                counts["skipped"] += 1
                continue
            yield item


def _chunks(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
