"""Verifiable rewards: pure string -> float in [0, 1] checks, and the built-in tasks' reward functions.

A reward function has the signature every configured one has (``data.reward_fns``):
``fn(item: dict, response: str, response_ids: list[int]) -> float | dict[str, float]``, where ``item`` is the
prompt's dataset row. The built-in tasks name theirs here by dotted path and go through the same mechanism.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number with optional sign, thousands separators and decimals; a trailing "." is not part of it.
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_HASHES_RE = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    out = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                out.append(text[start:i])
                break
    return out


def _canonical(number: str) -> str | None:
    """'1,000.50' -> '1000.5', '+7' -> '7', '-0.0' -> '0'; None if it is not a number."""
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(text: str) -> str | None:
    """The final answer of a solution text as a canonical number string, or None.

    Precedence, most explicit first: the last \\boxed{...} holding a number, the last `#### N`, the last
    "answer is N" / "answer: N", and otherwise the last number anywhere in the text.
    """
    for content in reversed(_boxed_contents(text)):
        numbers = _NUMBER_RE.findall(content)
        if numbers:
            return _canonical(numbers[-1])
    for pattern in (_HASHES_RE, _ANSWER_IS_RE):
        found = pattern.findall(text)
        if found:
            return _canonical(found[-1])
    numbers = _NUMBER_RE.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def math_exact_match(response: str, answer: str) -> float:
    """1.0 when the response's final number equals the reference's numerically, else 0.0.

    The reference goes through the same extraction, so a GSM8K-style solution ending in `#### 72` works
    as well as a bare "72". Non-numeric references never match.
    """
    predicted, gold = extract_final_number(response), extract_final_number(answer)
    if predicted is None or gold is None:
        return 0.0
    return float(Decimal(predicted) == Decimal(gold))


def cyclic_match(response: str, pattern: str, k: int) -> float:
    """Fraction of the first k characters of response that equal `pattern` repeated cyclically.

    Missing characters (a response shorter than k) count as wrong, so stopping early is never rewarded;
    partial credit gives GRPO a gradient before the model gets everything right.
    """
    if not pattern or k < 1:
        raise ValueError(f"cyclic_match needs a non-empty pattern and k >= 1, got {pattern!r}, k={k}")
    expected = (pattern * (k // len(pattern) + 1))[:k]
    return sum(r == e for r, e in zip(response[:k], expected)) / k


def copy_pattern_reward(item: dict, response: str, response_ids: list[int]) -> float:
    """copy_pattern / repeat_token: the response repeats ``item["pattern"]`` for ``len(item["answer"])`` chars."""
    return cyclic_match(response, item["pattern"], len(item["answer"]))


def math_answer_reward(item: dict, response: str, response_ids: list[int]) -> float:
    """jsonl / parquet / hf_dataset: the response's final number equals ``item["answer"]``'s."""
    return math_exact_match(response, item["answer"])
