"""Keep labels: for each reasoning piece of a trace, its level, the smallest ratio at which it is kept.

A piece kept at 20 % outranks one kept only at 80 %, so a model that ranks pieces by level keeps, by
top-k, the right pieces at every ratio. Three sources:
- the built-in task: its gold verbosity levels (`tasks.arithmetic.span_levels`);
- keep spans, the shape Extra-CoT's labeler produces: a JSONL file, one trace per line,
      {"question": "...", "response": "<think> ... </think> ...", "keep": [[start, end], ...]}
  with character offsets into `response` (end exclusive); a piece touching a span is kept (level 20),
  the others are dropped (level 100); a number partly inside a span is kept whole;
- `rule_spans`, a weak baseline for GSM8K-style step traces: summaries, equations and numbers kept,
  narration dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, model_validator

from compress.spans import Trace, TraceError, read_trace
from configs.schema import TaskConfig
from tasks.arithmetic import gold_trace, lax_steps, problems, span_levels
from tasks.files import read_jsonl
from tasks.format import STEP_CLOSE, STEP_OPEN, count_tokens

KEPT, DROPPED = 20, 100
EQUATION = re.compile(r"[$\d][\d.,$%]*(?:\s*[-+*/x×=]\s*[$\d][\d.,$%]*)+|\d+(?:[.,]\d+)*%?")


@dataclass(frozen=True)
class Example:
    """A question, its trace, and the level of each piece (None for tags)."""

    question: str
    trace: Trace
    levels: tuple[int | None, ...]

    def gold_keep(self, ratio: int) -> list[bool]:
        """The pieces the labels keep at `ratio` % (tags always)."""
        return [level is None or level <= ratio for level in self.levels]


def builtin_examples(task: TaskConfig, split: str, limit: int | None = None) -> list[Example]:
    """Full gold traces of the built-in task, labelled with their verbosity levels."""
    out = []
    for problem in problems(task, split)[:limit]:
        lax = lax_steps(problem, task.lax_fraction, task.seed)
        levels: list[int | None] = []
        for spans, summary in span_levels(problem, lax):
            levels += [level for text, level in spans for _ in range(count_tokens(text))]
            levels += [None, *[KEPT] * count_tokens(summary), None]  # <step> summary </step>
        trace = read_trace(gold_trace(problem, lax))
        assert len(levels) == len(trace.pieces), "span levels and pieces out of step"
        out.append(Example(problem.question, trace, tuple(levels)))
    return out


def levels_from_spans(trace: Trace, keep: Sequence[tuple[int, int]]) -> tuple[int | None, ...]:
    """Levels from keep spans (character offsets into the response): pieces touching a span are kept,
    and so is every piece of an atom (a number) one of whose pieces is."""
    for start, end in keep:
        if not 0 <= start < end <= len(trace.response):
            raise TraceError(f"keep span [{start}, {end}] falls outside the response ({len(trace.response)} characters)")
    touched = {atom for (start, end), atom in zip(trace.spans, trace.atoms)
               if atom >= 0 and any(s < end and start < e for s, e in keep)}
    return tuple(None if atom < 0 else KEPT if atom in touched else DROPPED for atom in trace.atoms)


class _Labelled(BaseModel):
    question: str
    response: str
    keep: list[tuple[int, int]]

    @model_validator(mode="after")
    def _fits(self) -> _Labelled:
        levels_from_spans(read_trace(self.response), self.keep)  # a ValueError: read_jsonl names the line
        return self


def span_examples(path: str | Path) -> list[Example]:
    """Examples from a keep-spans file (the module docstring's shape); `DataFileError` names the file and
    line of a trace without step tags or a span outside its response."""
    out = []
    for row in read_jsonl(path, _Labelled, what="a labelled trace"):
        trace = read_trace(row["response"])
        out.append(Example(row["question"], trace, levels_from_spans(trace, row["keep"])))
    return out


def rule_spans(trace: Trace) -> list[tuple[int, int]]:
    """Keep spans of the rule labeler: every summary, and every equation or number in the reasoning."""
    text = trace.response
    spans = [(m.start(1), m.end(1)) for m in re.finditer(rf"{re.escape(STEP_OPEN)}(.*?){re.escape(STEP_CLOSE)}", text, re.S)
             if m.group(1).strip()]
    start, end = trace.spans[0][0], trace.spans[-1][1]
    spans += [(start + m.start(), start + m.end()) for m in EQUATION.finditer(text[start:end])]
    return sorted(spans)
