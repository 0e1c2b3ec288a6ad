"""Trajectories on disk: one JSON line per trajectory, the shape shared by the RL loop's rollout samples
(`samples/step_N.jsonl`), the evaluations' trajectories (`evals/step_N.jsonl`) and `accordion view`.

    {"id", "question", "answer", "source": "rollout" | "eval", "step", "mode", "budget", "chosen", "greedy",
     "status", "reason", "correct", "reward", "components", "reasoning_tokens", "generated_tokens",
     "peak_context", "unfold_context",
     "steps":    [{"reasoning", "summary", "segment", "version", "last_version"}],
     "final":    "the answer is \\boxed{N}",
     "segments": [{"tokens", "prompt_tokens", "version", "last_version", "finish_reason"}]}

`steps` is the outline: each step's summary (None for a step cut off before its `<step>` tag) and the
detailed reasoning under it, with the segment that generated it (Fold: one per step; Unfold: all in
segment 0) and the policy versions of that segment (`last_version > version`: a weight update
interrupted it). `final` is the text after `</think>`. Model text is untrusted: whoever renders it escapes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from actors.fold import Trajectory
from tasks.files import read_jsonl
from tasks.format import STEP_CLOSE, STEP_OPEN, THINK_CLOSE, THINK_OPEN, reasoning_tokens


def split_steps(response: str) -> tuple[list[tuple[str, str | None]], str]:
    """`(reasoning, summary)` per step and the text after `</think>`, read leniently: a malformed or
    unfinished response still shows what it has (a last step not closed by `</step>` has summary None
    and keeps all its text as reasoning, a cut-off `<step> summa` included)."""
    head, opened, rest = response.partition(THINK_OPEN)
    body, closed, final = (rest if opened else head).partition(THINK_CLOSE)
    *closed_steps, tail = body.split(STEP_CLOSE)
    steps: list[tuple[str, str | None]] = [
        (reasoning.strip(), summary.strip()) for reasoning, _, summary in (s.partition(STEP_OPEN) for s in closed_steps)
    ]
    if tail.strip():  # text no `</step>` closed, a cut-off summary included: an unfinished step
        steps.append((tail.strip(), None))
    return steps, final.strip() if closed else ""


def trajectory_record(t: Trajectory, *, source: str, answer: str | None = None, correct: bool | None = None,
                      step: int | None = None, greedy: bool = False, reward: float | None = None,
                      components: dict[str, float] | None = None) -> dict[str, Any]:
    """One trajectory as a JSON-ready record (the module docstring's shape)."""
    steps, final = split_steps(t.response)
    last = max(len(t.segments) - 1, 0)

    def segment_of(k: int) -> int:
        return min(k, last) if t.mode == "fold" else 0

    versions = [(s.version, s.last_version) for s in t.segments] or [(None, None)]
    return {
        "id": t.id, "question": t.question, "answer": answer, "source": source, "step": step, "mode": t.mode,
        "budget": t.budget, "chosen": t.chosen_budget, "greedy": greedy, "status": t.status, "reason": t.reason,
        "correct": correct, "reward": reward, "components": components or {},
        "reasoning_tokens": reasoning_tokens(t.response), "generated_tokens": t.generated_tokens,
        "peak_context": t.peak_context, "unfold_context": t.unfold_context,
        "steps": [{"reasoning": r, "summary": s, "segment": segment_of(k),
                   "version": versions[segment_of(k)][0], "last_version": versions[segment_of(k)][1]}
                  for k, (r, s) in enumerate(steps)],
        "final": final,
        "segments": [{"tokens": len(s.response_ids), "prompt_tokens": len(s.prompt_ids), "version": s.version,
                      "last_version": s.last_version, "finish_reason": s.finish_reason} for s in t.segments],
    }


class _Step(BaseModel):
    reasoning: str
    summary: str | None


class _Record(BaseModel):
    """What a line must hold to be shown as a trajectory (other fields are optional)."""

    id: str
    question: str
    mode: Literal["fold", "unfold"]
    steps: list[_Step]
    final: str


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every trajectory record of a JSONL file; `DataFileError` names the file and line of the first
    line that is not one."""
    return read_jsonl(path, _Record, what="a trajectory record")
