"""Which checkpoints to delete: a pure function of what is on disk, so it is right after a resume too.

Rules (a step survives if ANY rule keeps it):
- ``max_to_keep=K``: the K newest steps;
- ``keep_top_k=K``: the K best by ``metric`` (``metric_mode`` max or min), plus always the newest step,
  which is the one a crash would resume from. Ties go to the newer step. Steps with no usable value
  (absent, None, NaN, not a number) rank below every step that has one.
- ``protected`` steps (being resumed from, being written) are never deleted and take no rule's slot.
With neither rule set nothing is deleted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping


def _positive_or_none(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _usable(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def select_steps_to_delete(
    steps: Iterable[int],
    metrics: Mapping[int, Mapping[str, Any]],
    max_to_keep: int | None = None,
    keep_top_k: int | None = None,
    metric: str | None = None,
    metric_mode: str = "max",
    protected: Iterable[int] = (),
) -> list[int]:
    """The steps to delete, oldest first."""
    _positive_or_none("max_to_keep", max_to_keep)
    _positive_or_none("keep_top_k", keep_top_k)
    if metric_mode not in ("max", "min"):
        raise ValueError(f"metric_mode must be 'max' or 'min', got {metric_mode!r}")
    if keep_top_k is not None and not metric:
        raise ValueError("keep_top_k needs a metric to rank checkpoints by")
    ordered = sorted(set(steps))
    if not ordered or (max_to_keep is None and keep_top_k is None):
        return []
    keep = set(protected)
    keep.add(ordered[-1])
    if max_to_keep is not None:
        keep.update(ordered[-max_to_keep:])
    if keep_top_k is not None:
        sign = -1.0 if metric_mode == "max" else 1.0

        def rank(step: int) -> tuple[bool, float, int]:
            value = _usable(metrics.get(step, {}).get(metric))
            return (value is None, 0.0 if value is None else sign * value, -step)

        keep.update(sorted(ordered, key=rank)[:keep_top_k])
    return [s for s in ordered if s not in keep]
