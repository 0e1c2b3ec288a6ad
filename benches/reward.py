"""`accordion bench reward`: answer checking under a hard timeout, on ordinary and on adversarial answers.

Two sets of responses in the step format, scored by `rewards.scorer.Scorer` (what `accordion score` and the
reward workers run: the config's `reward` section, `reward.processes` verifier processes, each check killed
at `reward.timeout_s`):
- ordinary: GSM8K test questions answered about 70 % right, some with thousands separators, decimals or units;
- adversarial: answers known to hang, explode or choke a sympy-based verifier.
The baseline on the ordinary set is what peers' reward functions do: math-verify in this process, one check
after another, no timeout (on the adversarial set it would hang, so it does not run there).

`--inputs DIR` also writes both sets as `DIR/ordinary.jsonl` and `DIR/adversarial.jsonl`, inputs for
`accordion score --in`; its summary line gives the same figures (lines/s, timeouts, slowest check).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from benches import bench_parser, figure, report
from configs import config_from_args
from tasks.benchmarks import load_benchmark
from tasks.format import reasoning_tokens, render_trace


def main(argv: list[str], prog: str) -> int:
    parser = bench_parser(prog, __doc__)
    parser.add_argument("--n", type=int, default=1000, help="ordinary responses (default: %(default)s)")
    parser.add_argument("--adversarial", type=int, default=64, help="adversarial responses, most of them run to "
                        "the timeout: 4 of each kind by default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", type=Path, help="also write both sets as JSONL into this folder")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    sets = {"ordinary": ordinary(args.n, Path(cfg.task.data_dir), args.seed),
            "adversarial": adversarial(args.adversarial, args.seed)}
    if args.inputs:
        args.inputs.mkdir(parents=True, exist_ok=True)
        for kind, items in sets.items():
            with open(args.inputs / f"{kind}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(item) + "\n" for item in items)
        print(f"wrote {args.inputs}/ordinary.jsonl and adversarial.jsonl")

    from rewards.scorer import Scorer

    result: dict = {"processes": cfg.reward.processes, "timeout_s": cfg.reward.timeout_s}
    for kind, items in sets.items():
        with Scorer(cfg.reward) as scorer:
            start = time.perf_counter()
            scored = scorer.score(items)
            seconds = time.perf_counter() - start
            stats = scorer.stats()
        result[kind] = {"lines": len(items), "lines_per_s": len(items) / seconds,
                        "correct": sum(s["correct"] for s in scored), "timeouts": stats["timeouts"],
                        "crashes": stats["crashes"], "slowest_check_s": stats["max_call_s"]}
        print(f"{kind}: {len(items)} lines in {seconds:.1f} s, {result[kind]['timeouts']} timeouts, "
              f"slowest check {stats['max_call_s']:.2f} s (limit {cfg.reward.timeout_s:g} s)")
    result["bare_lines_per_s"] = bare(sets["ordinary"])
    limit = cfg.reward.timeout_s
    figures = [
        figure(f"ordinary answers checked/s, {cfg.reward.processes} killable processes vs math-verify in-process",
               result["ordinary"]["lines_per_s"], result["bare_lines_per_s"]),
        figure("adversarial answers checked/s (in-process math-verify hangs)", result["adversarial"]["lines_per_s"]),
        figure(f"slowest adversarial check, s (reward.timeout_s {limit:g})", result["adversarial"]["slowest_check_s"],
               target=f"<= {1.5 * limit:g}"),
    ]
    report(args.out, result, figures, "n/a (no tensors)")
    return 0


def bare(items: list[dict]) -> float:
    """Lines/s of the peers' way: extract and check each answer in this process, no timeout."""
    from rewards.answer import equivalent, extract_answer, gold_answer

    start = time.perf_counter()
    for item in items:
        pred = extract_answer(item["response"])
        if pred:
            equivalent(pred, gold_answer(item["answer"]))
    return len(items) / (time.perf_counter() - start)


def ordinary(n: int, data_dir: Path, seed: int = 0) -> list[dict]:
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
        items.append(_item(render_trace(steps, f"The answer is \\boxed{{{pred}}}"), gold))
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
            items.append(_item(response, rng.choice(("3", "\\frac{1}{2}", "10^{100}"))))
    return items


def _item(response: str, answer: str) -> dict:
    """A line that either reward (`reward.name`) can score: the full budget, the trace its own reference length."""
    return {"response": response, "answer": answer, "budget": 100, "ref_len": reasoning_tokens(response)}
