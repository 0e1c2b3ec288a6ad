"""`accordion plan`: the memory plan of a config, per device of each role, before anything starts.

    accordion plan --config configs/local_48gb.yaml          the table; exit status 1 if it does not fit
    accordion plan --config configs/cluster.yaml --json      the same as JSON (`fits`, `fold_unfold_concurrency_ratio`, ...)

The architecture comes from `model.path`'s config.json, or, before the folder exists, from the `model`
section's dimensions. `accordion train` runs the same check before it starts a GPU run.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from configs import add_config_arguments, config_from_args


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from cluster.plan import make_plan, render

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs to stdout on import: keep `--json | jq` clean
        plan = make_plan(cfg)
    print(plan.model_dump_json(indent=2) if args.json else render(plan, cfg))
    return 0 if plan.fits else 1
