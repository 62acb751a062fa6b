"""data.reward_workers: N: scoring in a small pool of Ray tasks, off the coordinator and the rollout workers.

Each task scores a contiguous run of prompts (all ``n`` samples of each), so the results concatenate back in
sample order; the seed of every call depends on the sample's index in the step, not on the task
(rayrl.data.scoring). A task's process keeps its Scorer between steps (the functions loaded once)."""

from __future__ import annotations

from typing import Any

import ray

from rayrl.data.scoring import Scorer

_SCORERS: dict[tuple, Scorer] = {}  # per process: one Scorer per (specs, timeout, seed)


def _score_chunk(specs: tuple, timeout_s: float, seed: int, items: list[dict], texts: list[str],
                 ids: list[list[int]], n: int, step: int, first: int) -> list[dict[str, float]]:
    key = (specs, timeout_s, seed)
    if key not in _SCORERS:
        _SCORERS[key] = Scorer(specs, timeout_s, seed)
    return _SCORERS[key].score(items, texts, ids, n, step, first)


_remote_score_chunk = ray.remote(num_cpus=1)(_score_chunk)


def submit(specs: tuple, cfg: Any, items: list[dict], texts: list[str], ids: list[list[int]], n: int, step: int,
           chunks: list[list[int]]) -> list[ray.ObjectRef]:
    """One task per non-empty chunk of prompt indices; each returns its samples' scores in order."""
    refs = []
    for chunk in (c for c in chunks if c):
        lo, hi = chunk[0] * n, (chunk[-1] + 1) * n
        refs.append(_remote_score_chunk.remote(specs, cfg.data.reward_timeout_s, cfg.runner.seed,
                                               [items[i] for i in chunk], texts[lo:hi], ids[lo:hi], n, step, lo))
    return refs
