"""The two rewards of the custom task, the usual GRPO pair: a format reward that shapes the answer early and
a correctness reward that checks it. A reward function takes the dataset row (``item``: every column of it),
the response text and its token ids, and returns a float, or a dict of floats whose first value is the
reward and the others are logged as ``reward/<function>/<key>``."""

from __future__ import annotations

import re


def format_reward(item: dict, response: str, response_ids: list[int]) -> float:
    """The fraction of the response's first two characters that are digits: partial credit from the start."""
    head = response[:2]
    return sum(c.isdigit() for c in head) / 2


def correctness_reward(item: dict, response: str, response_ids: list[int]) -> dict[str, float]:
    """1.0 when the number the response starts with is the row's answer; also logs whether it starts with one."""
    match = re.match(r"\d+", response)
    return {"correct": float(match is not None and match.group() == item["answer"]),
            "answered": float(match is not None)}
