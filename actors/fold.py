"""The Fold protocol as pure functions over plain data: no Ray, no vLLM, no tokenizer.

A Fold rollout has exactly the shape of `tasks.format.fold_segments`: segment k is generated after
the folded context of the summaries before it (`fold_context`), stops at `</step>`, and the last
segment closes `</think>` and answers, ending at EOS. Unfold is the same text in one segment.

    step segment:    " reasoning <step> summary </step>"        (stopped at </step>)
    answer segment:  " </think> the answer is \\boxed{N}"         (stopped at EOS)

In policy mode (`<COMP_AUTO>`) the first prompt stops before `<think>`: the first segment starts
with the chosen budget token and `<think>`, and later contexts carry that budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from tasks.format import (
    BUDGET_TOKENS, FORMAT_TOKENS, POLICY_TOKEN, STEP_CLOSE, STEP_OPEN, THINK_CLOSE, THINK_OPEN, fold_context,
    parse_trace, split_budget,
)

Mode = Literal["fold", "unfold"]
Status = Literal["answered", "unfinished", "malformed"]
AUTO = "auto"
"""`RolloutRequest.budget` for policy mode: the prompt ends with `<COMP_AUTO>`, the model picks its budget."""



def unwritable_tokens(budget: int | str | None, segment: int) -> tuple[str, ...]:
    """Format tokens the model may not write in segment `segment` of a response under `budget`: the tokens
    that open a response (a budget, `<think>`) come from the generator, and `<COMP_AUTO>` only ends a prompt.
    Only the first segment of policy mode opens with the model's own budget choice (`<COMP_40> <think>`).
    At temperature 1.0 a small model writes them mid-reasoning now and then (13 of 180 wrong Unfold samples
    after the demo's SFT), which breaks the trace's format."""
    opening = (*BUDGET_TOKENS.values(), THINK_OPEN)
    return (POLICY_TOKEN,) if budget == AUTO and segment == 0 else (*opening, POLICY_TOKEN)


@dataclass(frozen=True)
class RolloutRequest:
    """One trajectory to generate. `id` names the trajectory (unique per call); `meta` rides along
    untouched (question id, gold answer, group index ...)."""

    id: str
    question: str
    mode: Mode = "fold"
    budget: int | str | None = None
    """A ratio in `tasks.format.BUDGETS`, `AUTO` (policy mode), or None (no budget token)."""
    temperature: float | None = None
    """Overrides the config's sampling temperature for this trajectory (0: greedy, e.g. evaluation)."""
    top_p: float | None = None
    """Overrides the config's nucleus mass for this trajectory."""
    meta: dict = field(default_factory=dict)
    seed: int | None = None
    """Seeds the sampling: segment k draws with seed + k, so the same request on the same weights draws the
    same tokens (a resumed run repeats the uninterrupted one). None: the engine's own stream."""

    def __post_init__(self) -> None:
        if self.mode not in ("fold", "unfold"):
            raise ValueError(f"request {self.id}: mode {self.mode!r} is not 'fold' or 'unfold'")
        if self.budget is not None and self.budget != AUTO and self.budget not in BUDGET_TOKENS:
            raise ValueError(f"request {self.id}: budget {self.budget!r} is not one of {[*BUDGET_TOKENS, AUTO]}")


@dataclass
class Segment:
    """One engine request of a trajectory: what the model saw, what it sampled, under which weights."""

    trajectory_id: str
    index: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """Sampling logprob of each response token (same length as `response_ids`)."""
    version: int
    """Policy version that generated its first token (the one staleness is counted from)."""
    finish_reason: str
    """'stop' (stop token or EOS) or 'length' (hit the segment's max tokens)."""
    text: str
    last_version: int | None = None
    """Version of its last token: newer than `version` when a weight update interrupted the segment
    and it went on under the new weights (each token's logprob is from the weights that sampled it)."""

    def __post_init__(self) -> None:
        if self.last_version is None:
            self.last_version = self.version


@dataclass
class Trajectory:
    """A finished rollout. `response` is the Unfold-equivalent full text, ready for `parse_trace`."""

    id: str
    question: str
    mode: Mode
    budget: int | str | None
    segments: list[Segment]
    status: Status
    reason: str
    """Why the chain ended ('answered at EOS', 'segment limit 8 reached', 'malformed: ...')."""
    response: str
    chosen_budget: int | None = None
    """Policy mode: the ratio the model chose; otherwise the requested ratio."""
    meta: dict = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.response_ids) for s in self.segments)

    @property
    def segment_tokens(self) -> list[int]:
        return [len(s.response_ids) for s in self.segments]

    @property
    def peak_context(self) -> int:
        """The largest prompt+segment length any segment needed (the KV it held at its end)."""
        return max((len(s.prompt_ids) + len(s.response_ids) for s in self.segments), default=0)

    @property
    def unfold_context(self) -> int:
        """The context the same text would need in Unfold mode: first prompt + everything generated."""
        return len(self.segments[0].prompt_ids) + self.generated_tokens if self.segments else 0

    @property
    def versions(self) -> list[int]:
        return [s.version for s in self.segments]


@dataclass(frozen=True)
class Limits:
    """Fold limits (the public Accordion code: 6144 tokens/segment, prompt <= 14336, 6-8 segments, summary <= 1536)."""

    segment_tokens: int
    max_segments: int
    max_prompt_tokens: int
    max_summary_tokens: int


@dataclass(frozen=True)
class Parsed:
    """One generated segment, read. `kind` 'step' continues the chain, 'answer' ends it, the rest stop it."""

    kind: Literal["step", "answer", "unfinished", "malformed"]
    reason: str = ""
    summary: str = ""
    chosen_budget: int | None = None


def parse_segment(text: str, finish_reason: str, stopped_at_step: bool, first: bool, policy: bool) -> Parsed:
    """Read one Fold segment's decoded text (the stop tag included, EOS not).

    finish_reason: 'stop' or 'length'; stopped_at_step: it stopped on `</step>` (else on EOS).
    first/policy: a first segment in policy mode must open with `<COMP_xx> <think>`.
    """
    chosen = None
    if first and policy:
        chosen, text = split_budget(text)
        if chosen is None:
            return Parsed("malformed", "policy mode: the segment does not start with <COMP_xx> <think>")
    if not text.strip():
        return Parsed("malformed", "empty segment")
    if finish_reason == "length":
        return Parsed("unfinished", "segment hit its token limit")
    counts = {tag: text.count(tag) for tag in FORMAT_TOKENS}
    if stopped_at_step:
        extra = [t for t, n in counts.items() if n and t not in (STEP_OPEN, STEP_CLOSE)]
        if counts[STEP_OPEN] != 1 or counts[STEP_CLOSE] != 1 or extra:
            return Parsed("malformed", f"a step segment needs exactly one {STEP_OPEN} and one {STEP_CLOSE} "
                                       f"and no other tags, got {_tag_list(counts)}")
        summary = text.split(STEP_OPEN, 1)[1].rsplit(STEP_CLOSE, 1)[0].strip()
        if not summary:
            return Parsed("malformed", "missing summary")
        return Parsed("step", summary=summary, chosen_budget=chosen)
    # Ended at EOS: only a bare `</think> answer` is an answer; reasoning must close in a step first.
    before, sep, answer = text.partition(THINK_CLOSE)
    if not sep:
        return Parsed("malformed", f"ended without {THINK_CLOSE}")
    if before.strip():
        return Parsed("malformed", f"reasoning before {THINK_CLOSE} was not closed by a step summary")
    if any(tag in answer for tag in FORMAT_TOKENS):
        return Parsed("malformed", "format tags in the answer")
    if not answer.strip():
        return Parsed("malformed", "empty answer")
    return Parsed("answer", chosen_budget=chosen)


def first_context(budget: int | str | None) -> str:
    """The response prefix of the first segment: none in policy mode (the model writes budget and <think>)."""
    return "" if budget == AUTO else fold_context([], budget)


class FoldChain:
    """One Fold trajectory between engine calls: what to generate after, and when to stop.

    The caller loops: `context()` -> encode after the question -> `fits(prompt_len)` -> generate ->
    `add(segment, stopped_at_step)`, while it returns True; then `trajectory()`.
    `count_tokens(text)` measures summaries in the model's tokens.
    """

    def __init__(self, request: RolloutRequest, limits: Limits, count_tokens: Callable[[str], int]):
        self.request, self.limits, self.count_tokens = request, limits, count_tokens
        self.budget = None if request.budget == AUTO else request.budget
        self.summaries: list[str] = []
        self.segments: list[Segment] = []
        self.status: Status | None = None
        self.reason = ""

    def context(self) -> str:
        """The response prefix the next segment is generated after (`tasks.format.fold_context`)."""
        return fold_context(self.summaries, self.budget) if self.segments else first_context(self.request.budget)

    def fits(self, prompt_tokens: int) -> bool:
        """False (and the chain ends unfinished) when the folded prompt is over the limit."""
        if prompt_tokens > self.limits.max_prompt_tokens:
            self._end("unfinished", f"folded prompt of {prompt_tokens} tokens exceeds {self.limits.max_prompt_tokens}")
        return self.status is None

    def add(self, segment: Segment, stopped_at_step: bool) -> bool:
        """Record a generated segment; True when another segment should follow."""
        self.segments.append(segment)
        first, policy = len(self.segments) == 1, self.request.budget == AUTO
        parsed = parse_segment(segment.text, segment.finish_reason, stopped_at_step, first, policy)
        if parsed.chosen_budget is not None:
            self.budget = parsed.chosen_budget
        if parsed.kind == "answer":
            return self._end("answered", "answered at EOS")
        if parsed.kind != "step":
            return self._end(parsed.kind, f"{parsed.kind}: {parsed.reason}")
        summary_tokens = self.count_tokens(parsed.summary)
        if summary_tokens > self.limits.max_summary_tokens:
            return self._end("malformed", f"malformed: summary of {summary_tokens} tokens exceeds "
                                          f"{self.limits.max_summary_tokens}")
        self.summaries.append(parsed.summary)
        if len(self.segments) >= self.limits.max_segments:
            return self._end("unfinished", f"unfinished: segment limit {self.limits.max_segments} reached")
        return True

    def trajectory(self) -> Trajectory:
        if self.status is None:
            raise RuntimeError(f"trajectory {self.request.id} is still running")
        return _trajectory(self.request, self.segments, self.status, self.reason, self.budget)

    def _end(self, status: Status, reason: str) -> bool:
        self.status, self.reason = status, reason
        return False


def unfold_trajectory(request: RolloutRequest, segment: Segment) -> Trajectory:
    """An Unfold rollout: one segment holding the whole response."""
    text = first_context(request.budget) + segment.text
    status, reason = unfold_status(segment.text, text, segment.finish_reason, request.budget == AUTO)
    budget = split_budget(text)[0] if request.budget == AUTO else request.budget
    return _trajectory(request, [segment], status, reason, budget)


def too_long(request: RolloutRequest, prompt_tokens: int, limit: int) -> Trajectory:
    """A trajectory whose first prompt does not fit the engine: unfinished, nothing generated."""
    reason = f"unfinished: prompt of {prompt_tokens} tokens does not fit max_model_len {limit}"
    return _trajectory(request, [], "unfinished", reason, None)


def unfold_status(generated: str, text: str, finish_reason: str, policy: bool) -> tuple[Status, str]:
    """Status of an Unfold response: `generated` by the model, `text` with the prompt's prefix."""
    if not generated.strip():
        return "malformed", "malformed: empty segment"
    if finish_reason == "length":
        return "unfinished", "unfinished: hit the token limit"
    if policy and split_budget(text)[0] is None:
        return "malformed", "malformed: policy mode: the response does not start with <COMP_xx> <think>"
    if parse_trace(text) is None:
        return "malformed", "malformed: not <think> (reasoning <step> summary </step>)* </think> answer"
    return "answered", "answered at EOS"


def _trajectory(request: RolloutRequest, segments: list[Segment], status: Status, reason: str,
                budget: int | None) -> Trajectory:
    response = first_context(request.budget) + "".join(s.text for s in segments)
    return Trajectory(request.id, request.question, request.mode, request.budget, segments, status, reason,
                      response, budget, dict(request.meta))



def _tag_list(counts: dict[str, int]) -> str:
    return ", ".join(f"{n}x {t}" for t, n in counts.items() if n) or "no tags"
