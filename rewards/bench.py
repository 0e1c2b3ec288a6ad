"""Benchmark inputs for `accordion score`: ordinary model-style answers and adversarial ones.

    python -m rewards.bench ordinary --n 2000 --out runs/bench/ordinary.jsonl
    python -m rewards.bench adversarial --n 1000 --out runs/bench/adversarial.jsonl
    accordion score --in runs/bench/adversarial.jsonl --out runs/bench/adversarial.scored.jsonl

The summary line of `accordion score` gives the figures: lines/s, timeouts, slowest check.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tasks.benchmarks import load_benchmark
from tasks.format import render_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ordinary(n: int, seed: int = 0, data_dir: Path = DATA) -> list[dict]:
    """GSM8K test questions answered in the step format: about 70 % right (some written with
    thousands separators or as decimals), the rest off by a little."""
    rng = random.Random(seed)
    rows = load_benchmark("gsm8k", data_dir, "test")
    items = []
    for i in range(n):
        gold = rows[i % len(rows)]["answer"]
        value = int(gold.replace(",", "")) if gold.lstrip("-").replace(",", "").isdigit() else None
        pred = gold
        if value is not None and rng.random() < 0.3:
            pred = str(value + rng.choice((-2, -1, 1, 10)))
        elif value is not None and rng.random() < 0.2:
            pred = rng.choice((f"{value:,}", f"{value}.0", f"{value} \\text{{ dollars}}"))
        steps = [(f"we compute step {k} of the problem", f"the running total is {k}") for k in range(3)]
        items.append({"response": render_trace(steps, f"The answer is \\boxed{{{pred}}}"), "answer": gold})
    return items


def adversarial_answers(rng: random.Random) -> list[str]:
    """One of each kind of answer known to hang, explode or choke a sympy-based verifier."""
    depth = rng.randint(50, 400)
    tower = [str(rng.randint(2, 99)) for _ in range(rng.randint(3, 6))]
    return [
        "^{".join(tower) + "}" * (len(tower) - 1),  # 10^{10^{10^{10}}}
        f"(x+{rng.randint(1, 9)})^{{{rng.randint(10**4, 10**6)}}}",
        f"{rng.randint(10**5, 10**7)}!",
        "\\frac{1}{1+" * depth + "x" + "}" * depth,  # deeply nested fractions
        "\\sqrt{" * depth + "2" + "}" * depth,
        "{" * 5000 + "1" + "}" * 5000,
        str(rng.randint(1, 9)) * 100_000,  # 100 kB number
        "".join(rng.choice("\\frac{}^_()x+-*/0123456789 ") for _ in range(100_000)),  # 100 kB LaTeX soup
        f"\\sum_{{i=1}}^{{10^{{{rng.randint(9, 15)}}}}} i^{{i}}",
        f"\\int_0^{{\\infty}} e^{{-x^{{{rng.randint(50, 500)}}}}} \\, dx",
        "\\begin{pmatrix}" + "\\\\".join("&".join("x" for _ in range(30)) for _ in range(30)) + "\\end{pmatrix}",
        "\\{" + ",".join(str(i) for i in range(5000)) + "\\}",
        f"10^{{-10^{{{rng.randint(5, 12)}}}}}",
        "1e999999",
        "\x00\x01\ufffd" * 1000,
        f"x^{{{rng.randint(10**5, 10**7)}}} - (x-1)^{{{rng.randint(10**5, 10**7)}}}",
    ]


def adversarial(n: int, seed: int = 0) -> list[dict]:
    """`n` items cycling through `adversarial_answers`, boxed at the end of a normal step trace."""
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        for answer in adversarial_answers(rng)[: n - len(items)]:
            response = render_trace([("think about it", "it is big")], f"The answer is \\boxed{{{answer}}}")
            items.append({"response": response, "answer": rng.choice(("3", "\\frac{1}{2}", "10^{100}"))})
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("ordinary", "adversarial"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    items = (ordinary if args.kind == "ordinary" else adversarial)(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(item) + "\n" for item in items)
    print(f"wrote {len(items)} {args.kind} items to {args.out}")


if __name__ == "__main__":
    main()
