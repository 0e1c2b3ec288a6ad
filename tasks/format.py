"""The step format every part of the system reads and writes.

    <think> reasoning 1 <step> summary 1 </step> reasoning 2 <step> summary 2 </step> </think> answer \\boxed{N}

A Fold-mode segment is generated from the *folded context*: the same text with every detailed
reasoning removed, so the step tags themselves are the marker in front of each summary. Unfold
and Fold therefore see identical text around each summary and differ only in what they discard.
A budget token (`<COMP_40>`) ends the user prompt and is repeated as the first response token.
"""
from __future__ import annotations

import re
from typing import Sequence

from configs.schema import BUDGETS  # the ratios a config may ask for; their tokens are defined here

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
STEP_OPEN, STEP_CLOSE = "<step>", "</step>"
BUDGET_TOKENS = {ratio: f"<COMP_{ratio}>" for ratio in BUDGETS}
POLICY_TOKEN = "<COMP_AUTO>"
FORMAT_TOKENS = (THINK_OPEN, THINK_CLOSE, STEP_OPEN, STEP_CLOSE, *BUDGET_TOKENS.values(), POLICY_TOKEN)

# Words, single digits and single symbols, each keeping its leading whitespace: the pre-tokenizer
# of the built-in tokenizer, so token counts of built-in text are known without loading it.
TOKEN_PATTERN = re.compile(r"\s*(?:[A-Za-z]+|\d|[^\sA-Za-z\d])")
_FORMAT_TOKEN_PATTERN = re.compile("|".join(re.escape(t) for t in FORMAT_TOKENS))
_PIECE = re.compile(rf"\s*(?:{_FORMAT_TOKEN_PATTERN.pattern})|{TOKEN_PATTERN.pattern}")
_OPENING_BUDGET = re.compile(rf"\s*<COMP_(\d+)>\s*{re.escape(THINK_OPEN)}")
_NO_TAG = rf"(?:(?!{_FORMAT_TOKEN_PATTERN.pattern}).)*"
_STEP = re.compile(rf"({_NO_TAG}){re.escape(STEP_OPEN)}({_NO_TAG}){re.escape(STEP_CLOSE)}", re.S)
_TRACE = re.compile(
    rf"(?:<COMP_\d+>\s*)?{re.escape(THINK_OPEN)}(?P<body>(?:{_STEP.pattern})*)\s*{re.escape(THINK_CLOSE)}"
    rf"(?P<answer>{_NO_TAG})",
    re.S,
)


def count_tokens(text: str) -> int:
    """Tokens of `text` under the built-in tokenizer, format tokens excluded (they are not reasoning)."""
    return len(TOKEN_PATTERN.findall(_FORMAT_TOKEN_PATTERN.sub(" ", text)))


def pieces(text: str) -> list[re.Match]:
    """`text` cut as the built-in tokenizer cuts it: format tokens and `TOKEN_PATTERN` pieces, each with the
    whitespace before it (only trailing whitespace falls outside every piece), as matches with offsets."""
    return list(_PIECE.finditer(text))


def is_format_token(piece: str) -> bool:
    return piece.strip() in FORMAT_TOKENS


def reasoning_tokens(response: str) -> int:
    """Reasoning length as budgets measure it: tokens inside `<think>...</think>`, format tokens excluded."""
    body = response.split(THINK_OPEN, 1)[-1].split(THINK_CLOSE, 1)[0]
    return count_tokens(body)


def render_trace(steps: Sequence[tuple[str, str]], answer: str, budget: int | None = None) -> str:
    """The full response text for `(reasoning, summary)` steps followed by the answer text."""
    body = "".join(f" {reasoning} {STEP_OPEN} {summary} {STEP_CLOSE}" for reasoning, summary in steps)
    return f"{_budget_prefix(budget)}{THINK_OPEN}{body} {THINK_CLOSE} {answer}"


def fold_context(summaries: Sequence[str], budget: int | None = None) -> str:
    """The response prefix a Fold segment is generated after: every summary so far, no reasoning."""
    body = "".join(f" {STEP_OPEN} {summary} {STEP_CLOSE}" for summary in summaries)
    return f"{_budget_prefix(budget)}{THINK_OPEN}{body}"


def fold_segments(steps: Sequence[tuple[str, str]], answer: str, budget: int | None = None) -> list[tuple[str, str]]:
    """The Fold rollout of a trace as `(context, segment)` pairs: segment k is generated after the
    folded context of the summaries before it; the last segment closes `<think>` and answers.
    `fold_context([], budget) + "".join(segments) == render_trace(steps, answer, budget)`."""
    summaries = [summary for _, summary in steps]
    pairs = [
        (fold_context(summaries[:k], budget), f" {reasoning} {STEP_OPEN} {summary} {STEP_CLOSE}")
        for k, (reasoning, summary) in enumerate(steps)
    ]
    return [*pairs, (fold_context(summaries, budget), f" {THINK_CLOSE} {answer}")]


def parse_trace(response: str) -> tuple[list[tuple[str, str]], str] | None:
    """Inverse of `render_trace` for a well-formed response: `(steps, answer)`, or None if the tags
    are not `<think> (reasoning <step> summary </step>)* </think> answer` (budget token allowed first)."""
    match = _TRACE.fullmatch(response.strip())
    if match is None:
        return None
    steps = [(r.strip(), s.strip()) for r, s in _STEP.findall(match.group("body"))]
    return steps, match.group("answer").strip()


def require_steps(response: str) -> tuple[list[tuple[str, str]], str]:
    """`parse_trace` for a response that must be a step trace with at least one step; ValueError otherwise."""
    parsed = parse_trace(response)
    if parsed is None or not parsed[0]:
        raise ValueError(f"not a step trace: expected {THINK_OPEN} (reasoning {STEP_OPEN} summary {STEP_CLOSE})+ "
                         f"{THINK_CLOSE} answer")
    return parsed


def split_budget(text: str) -> tuple[int | None, str]:
    """The budget a response opens with and the rest after its `<think>`: `<COMP_40> <think> x` -> (40, " x");
    (None, text) when `text` does not open with a known budget token followed by `<think>`."""
    match = _OPENING_BUDGET.match(text)
    if match is None or int(match.group(1)) not in BUDGET_TOKENS:
        return None, text
    return int(match.group(1)), text[match.end():]


def budget_prompt(question: str, budget: int | str | None) -> str:
    """The user message: the question, ended by the budget token when one is asked for (`auto`:
    `<COMP_AUTO>`, the model picks its ratio)."""
    if budget is None:
        return question
    return f"{question} {POLICY_TOKEN if budget == 'auto' else BUDGET_TOKENS[budget]}"


def prompt_ids(tokenizer, question: str, budget: int | str | None, context: str) -> list[int]:
    """Token ids of the chat-rendered user message plus the response prefix `context` (a folded context,
    `<think>`, or nothing in policy mode): what the generator prompts with and SFT trains after."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": budget_prompt(question, budget)}],
                                        add_generation_prompt=True, return_dict=False)
    return list(ids) + tokenizer.encode(context, add_special_tokens=False)


def _budget_prefix(budget: int | None) -> str:
    return "" if budget is None else f"{BUDGET_TOKENS[budget]} "
