"""`accordion task`: print built-in problems with their gold traces, at every budget ratio."""
from __future__ import annotations

import argparse

from configs import add_config_arguments, config_from_args
from tasks.arithmetic import lax_steps, problems, verbosity_levels
from tasks.format import reasoning_tokens


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--show", type=int, default=2, help="how many problems to print (default: %(default)s)")
    parser.add_argument("--split", choices=("train", "eval"), default="eval")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args).task
    for problem in problems(cfg, args.split)[: args.show]:
        print(f"Q: {problem.question}\nA: {problem.answer}")
        levels = verbosity_levels(problem, lax_steps(problem, cfg.lax_fraction, cfg.seed))
        full = reasoning_tokens(levels[100])
        for ratio, trace in levels.items():
            print(f"  [{ratio:3d}% target, {reasoning_tokens(trace) / full:5.1%} measured] {trace}")
        print()
    return 0
