"""A step trace as the compressor sees it, and compression by keep scores: the pure half of the compressor.

The reasoning between `<think>` and `</think>` is cut into the built-in tokenizer's pieces (a word, a digit,
a symbol, a format tag). Budgets count every piece but the tags (`tasks.format.count_tokens`), so a ratio
of pieces is the ratio `<COMP_xx>` asks for. Two rules keep a compressed trace usable:
- the step tags are always kept, so it still parses as a step trace and Fold works at every budget;
- a number is one atom, kept or dropped whole: a compressed trace never shows half a number.
The answer after `</think>` is never compressed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from tasks.format import BUDGET_TOKENS, THINK_CLOSE, THINK_OPEN, is_format_token, pieces, require_steps

RATIOS = (20, 40, 60, 80)  # what a compressor is asked for; 100 is the trace itself
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


class TraceError(ValueError):
    """Scores or labels that do not fit a trace."""


@dataclass(frozen=True)
class Trace:
    """The reasoning of a response as pieces, each with its offsets in the response and its atom
    (pieces of one number share an atom; tags have atom -1)."""

    response: str
    pieces: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    atoms: tuple[int, ...]
    answer: str

    @property
    def counted(self) -> int:
        """Pieces a budget counts: all but the tags."""
        return sum(atom >= 0 for atom in self.atoms)


def read_trace(response: str) -> Trace:
    """The response's reasoning as pieces; ValueError when it is not `<think> (reasoning <step> summary
    </step>)+ </think> answer` (a budget token first is allowed, and dropped)."""
    _, answer = require_steps(response)
    start = response.index(THINK_OPEN) + len(THINK_OPEN)
    end = response.rindex(THINK_CLOSE)
    matches = pieces(response[start:end])
    numbers = [(m.start(), m.end()) for m in NUMBER.finditer(response[start:end])]
    atoms, atom, number = [], -1, None
    for m in matches:
        if is_format_token(m.group()):
            atoms.append(-1)
            continue
        inside = next((n for n in numbers if n[0] <= m.end() - 1 < n[1]), None)
        if inside is None or inside != number:
            atom += 1
        number = inside
        atoms.append(atom)
    return Trace(response, tuple(m.group() for m in matches), tuple((start + m.start(), start + m.end()) for m in matches),
                 tuple(atoms), answer)


def select(trace: Trace, scores: Sequence[float], ratio: int) -> list[bool]:
    """Which pieces stay at `ratio` %: the top-scored atoms (an atom scores the mean of its pieces) until
    k = round(counted × ratio / 100) pieces are kept, never more; an atom that would overshoot is passed
    over for lower-scored ones that fit. Tags always stay."""
    if len(scores) != len(trace.pieces):
        raise TraceError(f"{len(scores)} scores for {len(trace.pieces)} pieces")
    members: dict[int, list[int]] = {}
    for i, atom in enumerate(trace.atoms):
        if atom >= 0:
            members.setdefault(atom, []).append(i)
    ranked = sorted(members.values(), key=lambda idx: (-sum(scores[i] for i in idx) / len(idx), idx[0]))
    room = round(trace.counted * ratio / 100)
    keep = [atom < 0 for atom in trace.atoms]
    for idx in ranked:
        if len(idx) <= room:
            room -= len(idx)
            for i in idx:
                keep[i] = True
        if room == 0:
            break
    return keep


def render(trace: Trace, keep: Sequence[bool], ratio: int | None) -> str:
    """The response with only the kept pieces, tagged with `ratio`'s budget token (None: untagged). A kept
    piece that followed a dropped one gets a space, so that two numbers never run together."""
    out, dropped = [], False
    for piece, kept in zip(trace.pieces, keep):
        if not kept:
            dropped = True
            continue
        out.append(piece if not dropped or piece[:1].isspace() else f" {piece}")
        dropped = False
    head = f"{BUDGET_TOKENS[ratio]} " if ratio is not None else ""
    return f"{head}{THINK_OPEN}{''.join(out)} {THINK_CLOSE} {trace.answer}"


def compress(trace: Trace, scores: Sequence[float], ratio: int) -> str:
    """The trace at `ratio` % of its reasoning pieces, tagged `<COMP_ratio>`."""
    return render(trace, select(trace, scores, ratio), ratio)


def measured_ratio(trace: Trace, compressed: str) -> float:
    """Reasoning pieces of `compressed` over those of `trace` (tags excluded), as budgets measure them."""
    return read_trace(compressed).counted / trace.counted


def keep_counts(predicted: Sequence[bool], gold: Sequence[bool], trace: Trace) -> tuple[int, int, int]:
    """Over the counted pieces (tags excluded): kept by both, kept by `predicted`, kept by `gold`; summed
    over traces they give a micro F1 = 2 both / (predicted + gold)."""
    pairs = [(p, g) for p, g, atom in zip(predicted, gold, trace.atoms) if atom >= 0]
    return sum(p and g for p, g in pairs), sum(p for p, _ in pairs), sum(g for _, g in pairs)
