"""Final-answer extraction and equivalence: our extraction rules, math-verify's judgement.

Extraction is a linear scan, safe anywhere. `equivalent` is what the verifier processes run (see
`rewards.sandbox`). It has no timeout of its own: sympy can hang on answers such as
`10^{10^{10^{10}}}`, so callers that judge untrusted text run it in a `Sandbox`, which kills and
replaces a process that overruns. math-verify's own signal-based timeouts are switched off here
(`parsing_timeout=None`, `timeout_seconds=None`): signal.alarm only works on the main thread, and
a hard kill from outside is stronger anyway.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

# math-verify warns once that its timeout is off, and logs every parse failure: both are expected here.
logging.getLogger("math_verify").setLevel(logging.CRITICAL)

_BOXED = ("\\boxed", "\\fbox")
_GSM8K = re.compile(r"####\s*([^\n]+)")
# A plain number, thousands separators allowed: the fallback for answers written without \boxed.
_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d{1,1000}")
# The extracted answer is wrapped in \boxed{...} for math-verify, which then reads it as LaTeX first
# (fractions, intervals, \text units, percentages) and as a plain expression second (`1/2`, `x = 3`).
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), nested braces kept;
    None when there is none or its braces never close."""
    start = max(text.rfind(tag) for tag in _BOXED)
    if start < 0:
        return None
    i = start + len(next(tag for tag in _BOXED if text.startswith(tag, start)))
    if i < len(text) and text[i] != "{":
        # `\boxed 5`: the argument is the next whitespace-delimited word.
        word = text[i:].split(maxsplit=1)
        return word[0].rstrip("$.") if word and text[i].isspace() else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def extract_answer(text: str, number_fallback: bool = False) -> str | None:
    """The final answer in `text`: the last `\\boxed{...}`, else a GSM8K `#### N` line, else (only
    with `number_fallback`) the last plain number. None when nothing qualifies."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    found = _GSM8K.findall(text)
    if found and found[-1].strip():
        return found[-1].strip()
    if number_fallback:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> list:
    # Cached: the gold of a prompt repeats once per sample of its group.
    return parse(f"\\boxed{{{answer}}}", _EXTRACTION, parsing_timeout=None)


def equivalent(pred: str, gold: str) -> bool:
    """Whether answer `pred` is mathematically equal to `gold` (both bare answers, no `\\boxed`),
    as math-verify decides: `27.0`~`27`, `\\frac{1}{2}`~`0.5`, `x = 3`~`3`, `50\\%`~`50`, `1,000`~`1000`."""
    pred, gold = pred.strip(), gold.strip()
    if pred == gold:
        return True
    if _INTEGER.fullmatch(pred) and _INTEGER.fullmatch(gold):
        # Two plain integers: equal means equal. The commonest case, and ~100x cheaper than sympy.
        return int(pred) == int(gold)
    return verify(_parsed(gold), _parsed(pred), timeout_seconds=None)


def gold_answer(answer: str | int | float) -> str:
    """A gold answer as bare text: `\\boxed{}` / `#### N` unwrapped; AMC's float 27.0 becomes `27`."""
    if isinstance(answer, float):
        return str(int(answer)) if answer.is_integer() else repr(answer)
    text = str(answer)
    return extract_answer(text) or text.strip()


# Build math-verify's lazily compiled LaTeX grammar at import: the sandbox's forkserver imports this
# module once, so every verifier process (and every replacement) starts warm instead of spending
# ~0.5 s on its first answer.
equivalent("\\frac{1}{2}", "0.5")
