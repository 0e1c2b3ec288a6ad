"""Evaluation, one path for `accordion sft`, the RL loop and `accordion eval`.

`evaluate` rolls out every cell (mode x budget) on the same questions under one `Protocol` and turns
the trajectories into `evals.metrics`. It knows nothing of where generation and answer checking run:
it is given two coroutines, `rollout(requests) -> trajectories` and `check(items) -> scored items`. The RL
loop passes its generator actors and reward pool (`cluster.train`); a standalone evaluation passes one
in-process engine and scorer (`local_backend`). Correctness is always math-verify's, through the
hang-proof scorer, whatever the training reward is, and only a finished, well-formed trajectory can be
correct (Accordion scores an unfinished chain 0).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from actors.fold import RolloutRequest, Trajectory
from configs.schema import Config, GeneratorConfig
from evals.metrics import Outcome, by_mode, cell_metrics, reference_lengths
from tasks.format import reasoning_tokens

Rollout = Callable[[list[RolloutRequest]], Awaitable[list[Trajectory]]]
Check = Callable[[list[dict]], Awaitable[list[dict]]]
"""Scores items `{response, answer, status}` with `rewards.scorer` (at least `correct` and `status` back)."""
MODES = ("unfold", "fold")


@dataclass(frozen=True)
class Protocol:
    """How one evaluation samples: `samples` trajectories per question at `temperature`/`top_p`, plus one
    greedy trajectory per question with `greedy`. Stored beside every result it produced, so a figure
    says how it was measured: with the question set and the generation limits (`limits`) it ran under."""

    questions: int
    samples: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = True
    data: str | None = None
    """The evaluated set: `builtin` (the built-in task's held-out problems) or a `tasks.benchmarks` name."""
    preset: str | None = None
    """The `PRESETS` entry the values started from (explicit options override it); None: the config's."""
    max_tokens: int | None = None
    """Unfold: most new tokens of a response as used: the requested value, clamped to `max_model_len`
    (a response also stops at `max_model_len` minus its prompt)."""
    max_tokens_requested: int | None = None
    """Unfold: most new tokens as the preset or the config asked for them."""
    segment_tokens: int | None = None
    """Fold: most tokens of one segment."""
    max_segments: int | None = None
    """Fold: most segments of one trajectory (an answer must come within them)."""
    max_prompt_tokens: int | None = None
    """Fold: longest folded prompt (question + summaries)."""
    max_model_len: int | None = None
    """The engine's context: prompt + response."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Accordion's validation step: 8 samples at temperature 1.0, accuracy = their mean (avg@8).
    "accordion": {"samples": 8, "temperature": 1.0, "top_p": 1.0},
    # Extra-CoT's evaluation: temperature 0.7, top-p 0.9, 4,096 new tokens (Unfold's `max_tokens`; the paper
    # has no Fold mode, so Fold's segment limits stay the config's). Its sample count is not given.
    "extra-cot": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 4096},
}
"""Evaluation protocols of the two papers (`../shared/REFERENCE.md`), by `accordion eval --protocol` name:
values of `Protocol` fields; what a preset leaves out comes from the config."""


def limits(g: GeneratorConfig) -> dict[str, int]:
    """The generation limits a `Protocol` records, as the `generator` section sets them."""
    return {"max_tokens": g.max_tokens, "max_tokens_requested": g.max_tokens, "segment_tokens": g.segment_tokens,
            "max_segments": g.max_segments, "max_prompt_tokens": g.max_prompt_tokens, "max_model_len": g.max_model_len}


def protocols(cfg: Config) -> dict[str, Protocol]:
    """The protocols of the `eval` config section, on the configured task under the `generator` section's
    limits: final (also after SFT), periodic (during RL), budgets (the final budget sweep) and harder
    (longer problems than trained on)."""
    e = cfg.eval
    data = "builtin" if cfg.task.name == "arithmetic" else cfg.task.name

    def protocol(questions: int, samples: int) -> Protocol:
        return Protocol(questions, samples, e.temperature, e.top_p, e.greedy, data, **limits(cfg.generator))

    return {"final": protocol(e.questions, e.samples),
            "periodic": protocol(e.periodic_questions, e.periodic_samples),
            "budgets": protocol(e.budget_questions, e.budget_samples),
            "harder": protocol(e.harder_questions, e.harder_samples)}


@dataclass(frozen=True)
class Cell:
    """One request shape: a mode and a budget token (None: none; `auto`: policy mode)."""

    mode: str
    budget: int | str | None = None

    @property
    def name(self) -> str:
        return self.mode if self.budget is None else f"{self.mode}@{self.budget}"


async def evaluate(rollout: Rollout, check: Check, records: Sequence[dict], cells: Sequence[Cell],
                   protocol: Protocol, desc: str = "eval", traces: list[dict] | None = None) -> dict[str, dict]:
    """Metrics per cell name (`evals.metrics.cell_metrics`) on `records[:protocol.questions]`. Budget
    cells get r-hat when the same mode's `<COMP_100>` cell is among `cells`. `traces`: a list that gets
    every trajectory as an `evals.traces` record (for `accordion view`)."""
    from tqdm import tqdm

    from evals.traces import trajectory_record

    records = list(records)[: protocol.questions]
    per_cell = protocol.samples + protocol.greedy
    outcomes: dict[Cell, list[Outcome]] = {}
    seconds: dict[Cell, float] = {}
    with tqdm(total=len(cells) * len(records) * per_cell, desc=desc, unit="traj", dynamic_ncols=True,
              leave=False) as bar:
        for cell in cells:
            bar.set_postfix(cell=cell.name)
            requests = _requests(cell, records, protocol)
            start = time.perf_counter()
            trajectories = await _rolled_out(rollout, requests, bar)
            seconds[cell] = time.perf_counter() - start
            scored = await check([{"response": t.response, "answer": records[t.meta["question"]]["answer"],
                                   "status": t.status} for t in trajectories])
            outcomes[cell] = [
                Outcome(t.meta["question"], t.meta["greedy"], s["correct"] and s["status"] == "answered", s["status"],
                        reasoning_tokens(t.response), t.generated_tokens, t.peak_context,
                        t.chosen_budget if cell.budget == "auto" else None)
                for t, s in zip(trajectories, scored)
            ]
            if traces is not None:
                traces += [trajectory_record(t, source="eval", answer=records[t.meta["question"]]["answer"],
                                             correct=o.correct, greedy=o.greedy)
                           for t, o in zip(trajectories, outcomes[cell])]
    references = {c.mode: reference_lengths(outcomes[c]) for c in cells if c.budget == 100}
    return {c.name: cell_metrics(outcomes[c], seconds[c], references.get(c.mode) if c.budget is not None else None)
            for c in cells}


def _requests(cell: Cell, records: Sequence[dict], protocol: Protocol) -> list[RolloutRequest]:
    requests = []
    for q, record in enumerate(records):
        for j in range(protocol.samples):
            requests.append(RolloutRequest(f"{cell.name}:{q}:{j}", record["question"], cell.mode, cell.budget,
                                           protocol.temperature, protocol.top_p, {"question": q, "greedy": False}))
        if protocol.greedy:
            requests.append(RolloutRequest(f"{cell.name}:{q}:greedy", record["question"], cell.mode, cell.budget,
                                           0.0, 1.0, {"question": q, "greedy": True}))
    return requests


async def _rolled_out(rollout: Rollout, requests: list[RolloutRequest], bar) -> list[Trajectory]:
    """All of `requests` submitted at once, in chunks, so the progress bar moves as chunks finish."""
    size = max(16, -(-len(requests) // 16))
    chunks = [requests[i : i + size] for i in range(0, len(requests), size)]

    async def one(chunk: list[RolloutRequest]) -> list[Trajectory]:
        done = await rollout(chunk)
        bar.update(len(chunk))
        return done

    return [t for chunk in await asyncio.gather(*map(one, chunks)) for t in chunk]


async def modes(rollout: Rollout, check: Check, records: Sequence[dict], budget: int | str | None,
                protocol: Protocol, desc: str = "eval", traces: list[dict] | None = None,
                policy: bool = False) -> dict[str, Any]:
    """Unfold and Fold on the same questions: the report's flat `unfold_accuracy`, `fold_accuracy`,
    `*_greedy`, `*_peak_context`, `*_reasoning_tokens` and `fold_unfold_gap`. `policy` (with `budget`
    100): also Fold at `<COMP_AUTO>` on the same protocol, `auto`, its r-hat against the Fold cell."""
    cells = [Cell(mode, budget) for mode in MODES]
    auto = Cell("fold", "auto")
    results = await evaluate(rollout, check, records, [*cells, auto] if policy else cells, protocol, desc, traces)
    flat: dict[str, Any] = by_mode({c.mode: results[c.name] for c in cells})
    if policy:
        flat["auto"] = results[auto.name]
    return flat


async def budget_sweep(rollout: Rollout, check: Check, records: Sequence[dict], budgets: Sequence[int | str],
                       protocol: Protocol, traces: list[dict] | None = None) -> dict[str, dict]:
    """Fold mode at each budget token (and `<COMP_100>`, the reference of r-hat), keyed by budget."""
    wanted = list(dict.fromkeys([*budgets, 100]))
    results = await evaluate(rollout, check, records, [Cell("fold", b) for b in wanted], protocol, "budgets", traces)
    return {str(b): results[Cell("fold", b).name] for b in wanted}


async def final_suite(rollout: Rollout, check: Check, cfg: Config, traces: list[dict] | None = None) -> dict[str, Any]:
    """The end-of-job evaluation: `final` (both modes), `budgets` (with `eval.budgets`) and `harder`
    (with `eval.harder_steps`), plus the protocol of each part. `traces` gets the trajectories of `final`
    and of the budget sweep (where the policy's choices and slips are read).

    A model trained in policy mode (`auto` in `rl.budgets`) is also evaluated at `<COMP_AUTO>` under the
    final protocol (`final["auto"]`, as each periodic evaluation does under its own): the policy target is
    a 1-point loss against Fold at `<COMP_100>`, which the sweep's fewer samples cannot resolve (200 x 2:
    +-1.4 points)."""
    from tasks.dataset import records

    e = cfg.eval
    proto = protocols(cfg)
    held_out = records(cfg.task, "eval")
    out: dict[str, Any] = {"final": await modes(rollout, check, held_out, e.budget, proto["final"], "final eval",
                                                traces, policy="auto" in cfg.rl.budgets and e.budget == 100)}
    used = {"final": proto["final"].as_dict()}
    if e.budgets:
        out["budgets"] = await budget_sweep(rollout, check, held_out, e.budgets, proto["budgets"], traces)
        used["budgets"] = proto["budgets"].as_dict()
    if e.harder_steps:
        low, high = e.harder_steps
        harder_task = cfg.task.model_copy(update={"min_steps": low, "max_steps": high})
        out["harder"] = {"steps": [low, high], **await modes(rollout, check, records(harder_task, "eval"), e.budget,
                                                             proto["harder"], "harder eval")}
        used["harder"] = proto["harder"].as_dict()
    out["protocol"] = used
    return out


@contextlib.asynccontextmanager
async def local_backend(model_path: str, cfg: Config) -> AsyncIterator[tuple[Rollout, Check, Any]]:
    """One in-process vLLM engine and scorer (no Ray): `(rollout, check, generator)`."""
    from actors.generator import Generator
    from rewards.scorer import Scorer

    generator = Generator(model_path, cfg.generator, seed=cfg.task.seed)
    scorer = Scorer(cfg.reward.model_copy(update={"name": "accordion"}))
    await generator.start()

    async def check(items: list[dict]) -> list[dict]:
        return await asyncio.to_thread(scorer.score, items)

    try:
        yield generator.rollout, check, generator
    finally:
        await generator.shutdown()
        scorer.close()
