"""Retention selection: which step directories to delete."""

from __future__ import annotations

import math

import pytest

from rayrl.checkpoint import select_steps_to_delete as select

STEPS = [5, 10, 15, 20, 25]


def _m(**values) -> dict[int, dict]:
    return {int(k[1:]): {"reward": v} for k, v in values.items()}


def test_no_rule_deletes_nothing():
    assert select(STEPS, {}) == []
    assert select([], {}, max_to_keep=1) == []


def test_max_to_keep_keeps_newest_regardless_of_input_order():
    assert select([25, 5, 15, 10, 20, 10], {}, max_to_keep=2) == [5, 10, 15]
    assert select(STEPS, {}, max_to_keep=1) == [5, 10, 15, 20]
    assert select(STEPS, {}, max_to_keep=9) == []


def test_keep_top_k_max_keeps_best_and_newest():
    metrics = _m(s5=0.9, s10=0.1, s15=0.5, s20=0.7, s25=0.2)
    assert select(STEPS, metrics, keep_top_k=2, metric="reward") == [10, 15]


def test_keep_top_k_min_mode():
    metrics = _m(s5=0.9, s10=0.1, s15=0.5, s20=0.7, s25=0.2)
    assert select(STEPS, metrics, keep_top_k=2, metric="reward", metric_mode="min") == [5, 15, 20]


def test_ties_go_to_the_newer_step():
    metrics = _m(s5=1.0, s10=1.0, s15=1.0, s20=0.0, s25=0.0)
    assert select(STEPS, metrics, keep_top_k=2, metric="reward") == [5, 20]
    assert select(STEPS, metrics, keep_top_k=2, metric="reward", metric_mode="min") == [5, 10, 15]


def test_steps_without_usable_values_rank_worst():
    metrics = {5: {"reward": -100.0}, 10: {"reward": "high"}, 15: {"reward": None}, 20: {"reward": math.nan}}
    # only step 5 has a value: it is the best, however low; the newest is always kept
    assert select(STEPS, metrics, keep_top_k=1, metric="reward") == [10, 15, 20]
    assert select(STEPS, metrics, keep_top_k=1, metric="reward", metric_mode="min") == [10, 15, 20]
    # among steps without values, the newer ones rank higher
    assert select(STEPS, metrics, keep_top_k=2, metric="reward") == [10, 15, 20]
    assert select(STEPS, {**metrics, 25: {"reward": 0.0}}, keep_top_k=3, metric="reward") == [10, 15]
    assert select(STEPS, {}, keep_top_k=2, metric="reward") == [5, 10, 15]


def test_a_step_survives_if_any_rule_keeps_it():
    metrics = _m(s5=0.9, s10=0.8, s15=0.1, s20=0.2, s25=0.3)
    assert select(STEPS, metrics, max_to_keep=2, keep_top_k=1, metric="reward") == [10, 15]


def test_protected_steps_are_never_deleted_and_take_no_slot():
    assert select(STEPS, {}, max_to_keep=2, protected={5}) == [10, 15]
    metrics = _m(s5=0.9, s10=0.8, s15=0.1, s20=0.2, s25=0.3)
    assert select(STEPS, metrics, keep_top_k=1, metric="reward", protected=[15, 99]) == [10, 20]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_to_keep=0), "max_to_keep"),
        (dict(max_to_keep=-1), "max_to_keep"),
        (dict(max_to_keep=True), "max_to_keep"),
        (dict(max_to_keep=1.5), "max_to_keep"),
        (dict(keep_top_k=0, metric="reward"), "keep_top_k"),
        (dict(keep_top_k=2), "needs a metric"),
        (dict(keep_top_k=2, metric="reward", metric_mode="avg"), "metric_mode"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(STEPS, {}, **kwargs)
