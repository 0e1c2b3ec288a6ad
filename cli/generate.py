"""`accordion generate`: roll out Fold or Unfold trajectories and show each as an outline of step summaries.

Questions come from `--prompt`, a JSONL file (`--data`, field `question` or `problem`) or, by default,
the built-in task's held-out split. Every segment (prompt and response ids, logprobs, version) goes
to the JSONL file `--out`.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

from configs import add_config_arguments, config_from_args
from tasks.files import read_jsonl


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--model", help="model folder (default: the tiny model of the `model` section)")
    parser.add_argument("--mode", choices=("fold", "unfold"), default="fold")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="one question")
    source.add_argument("--data", type=Path, help="JSONL file of questions")
    parser.add_argument("--limit", type=int, default=4, help="questions from --data or the task (default: %(default)s)")
    parser.add_argument("--budget", choices=("20", "40", "60", "80", "100", "auto"),
                        help="budget token ending the prompt; auto: policy mode (<COMP_AUTO>); default none")
    parser.add_argument("--temperature", type=float, default=None, help="override generator.temperature")
    parser.add_argument("--out", type=Path, help="JSONL of every segment (default: <run_dir>/generate.jsonl)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    budget = None if args.budget is None else args.budget if args.budget == "auto" else int(args.budget)
    records = questions(args, cfg)
    out = args.out or Path(cfg.run_dir) / "generate.jsonl"
    from actors.generator import ModelFolderError

    try:
        trajectories = asyncio.run(run(args, cfg, records, budget))
    except ModelFolderError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for t in trajectories:
            for s in t.segments:
                f.write(json.dumps({**dataclasses.asdict(s), "status": t.status, "meta": t.meta}) + "\n")
    for t in trajectories:
        print_outline(t)
    print(f"wrote {sum(len(t.segments) for t in trajectories)} segments to {out}")
    return 0


def questions(args, cfg) -> list[dict]:
    if args.prompt:
        return [{"question": args.prompt}]
    if args.data:
        rows = read_jsonl(args.data, check=_has_question)[: args.limit]
        return [{"question": row.get("question", row.get("problem")), "answer": row.get("answer")} for row in rows]
    from tasks.arithmetic import problems

    return [{"question": p.question, "answer": p.answer} for p in problems(cfg.task, "eval")[: args.limit]]


def _has_question(row: dict) -> None:
    if "question" not in row and "problem" not in row:
        raise ValueError("no 'question' or 'problem' field")


async def run(args, cfg, records, budget):
    from actors.fold import RolloutRequest
    from actors.generator import Generator
    from models.build import resolve_model

    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(cfg.run_dir) / "vllm-cache"))
    model = args.model or resolve_model(cfg.model, cfg.run_dir)
    gen = Generator(model, cfg.generator, seed=cfg.model.seed)
    requests = [RolloutRequest(f"q{i}", r["question"], args.mode, budget, args.temperature, meta=r)
                for i, r in enumerate(records)]
    try:
        return await gen.rollout(requests)
    finally:
        await gen.shutdown()


def print_outline(t) -> None:
    from rich.console import Console
    from rich.markup import escape

    from tasks.format import parse_trace

    console = Console(highlight=False)
    color = {"answered": "green", "unfinished": "yellow", "malformed": "red"}[t.status]
    console.print(f"[bold]{t.id}[/] [{color}]{escape(t.reason)}[/] · {len(t.segments)} segments · "
                  f"{t.generated_tokens} tokens · peak context {t.peak_context} (Unfold {t.unfold_context})")
    console.print(f"  Q: {escape(t.question)}" + (f"  [dim](gold {t.meta['answer']})[/]" if t.meta.get("answer")
                                                   is not None else ""))
    parsed = parse_trace(t.response)
    if parsed is None:  # show what was generated, segment by segment
        for s in t.segments:
            console.print(f"  {s.index + 1}. [dim]{escape(s.text.strip()[:160])}[/] ({len(s.response_ids)} tok)")
        return
    steps, answer = parsed
    for k, (reasoning, summary) in enumerate(steps, 1):
        console.print(f"  {k}. {escape(summary)} [dim]({len(reasoning.split())} words of reasoning)[/]")
    console.print(f"  → {escape(answer)}")
