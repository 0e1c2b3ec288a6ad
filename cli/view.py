"""`accordion view PATH`: trajectories as one HTML page of step-summary outlines, to open in any browser.

PATH is a trajectory JSONL file (`evals.traces` records) or a run folder: its newest evaluation
(`evals/step_N.jsonl`; `--step N` for another), else its newest rollout samples (`samples/step_N.jsonl`).
Each trajectory is an outline of its step summaries; click one to unfold the reasoning under it. Fold
and Unfold trajectories of the same question sit side by side, with filters on correctness, mode and budget.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

STEP_FILE = re.compile(r"step_(\d+)\.jsonl")
SOURCES = ("evals", "samples")  # a run folder's trajectory files, the first one found wins


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, metavar="PATH", help="trajectory JSONL file or run folder")
    parser.add_argument("--out", type=Path, metavar="F.html",
                        help="HTML file (default: view.html next to the file, or in the run folder)")
    parser.add_argument("--step", type=int, metavar="N", help="run folder: the trajectories of RL step N (default: the newest)")
    parser.add_argument("--limit", type=positive, metavar="N",
                        help="only the first N questions, each with all its trajectories")
    args = parser.parse_args(argv)
    if not args.path.exists():
        raise FileNotFoundError(f"{args.path}: no such trajectory file or run folder")
    if args.step is not None and not args.path.is_dir():
        parser.error("--step picks a file in a run folder; PATH is not a folder")

    from cluster.run_dir import VIEW
    from evals.traces import read_records
    from evals.view import write_view

    source = trajectory_file(args.path, args.step) if args.path.is_dir() else args.path
    records = read_records(source)
    if args.limit:
        # Whole questions, not the first N lines: an evaluation writes all Fold lines before the Unfold ones.
        kept = set(list(dict.fromkeys(r["question"] for r in records))[: args.limit])
        records = [r for r in records if r["question"] in kept]
    out = args.out or (args.path if args.path.is_dir() else args.path.parent) / VIEW
    write_view(records, out, title=str(source))
    questions = len({r["question"] for r in records})
    print(f"wrote {out}: {len(records)} trajectories of {questions} questions from {source}")
    return 0


def step_files(folder: Path) -> dict[int, Path]:
    """The folder's `step_N.jsonl` files by N (none when there is no such folder)."""
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := STEP_FILE.fullmatch(p.name))}


def trajectory_file(run: Path, step: int | None) -> Path:
    """The run folder's newest (or step `step`'s) evaluation trajectories, else its rollout samples."""
    found = {sub: step_files(run / sub) for sub in SOURCES}
    for files in found.values():
        if files and step is None:
            return files[max(files)]
        if step in files:
            return files[step]
    if step is None:
        raise FileNotFoundError(f"{run}: no trajectories: neither evals/step_N.jsonl nor samples/step_N.jsonl "
                                "(not a run folder, or no evaluation or training step has finished yet)")
    steps = "; ".join(f"{sub}/ has steps {', '.join(map(str, sorted(files)))}" for sub, files in found.items() if files)
    raise FileNotFoundError(f"{run}: no evals/step_{step}.jsonl or samples/step_{step}.jsonl"
                            f" ({steps or 'no step files at all'})")
