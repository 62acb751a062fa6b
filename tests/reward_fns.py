"""Reward functions the tests name by dotted path (tests.reward_fns:NAME), as a user's module would be."""

from __future__ import annotations

import random
import time


def constant(item: dict, response: str, response_ids: list[int]) -> float:
    return 0.5


def parts(item: dict, response: str, response_ids: list[int]) -> dict[str, float]:
    return {"total": float(len(response_ids)), "chars": float(len(response))}


def noisy(item: dict, response: str, response_ids: list[int]) -> float:
    return random.random()  # deterministic only through the scorer's seed context


def raising(item: dict, response: str, response_ids: list[int]) -> float:
    raise ZeroDivisionError("the checker divided by zero")


def sleeping(item: dict, response: str, response_ids: list[int]) -> float:
    time.sleep(3)  # past the test's timeout; short, as the process waits for it at exit
    return 1.0


def not_a_number(item: dict, response: str, response_ids: list[int]) -> str:
    return "high"


def two_args(item: dict, response: str) -> float:
    return 1.0


NOT_CALLABLE = 3
