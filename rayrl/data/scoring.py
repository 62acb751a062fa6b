"""Scoring responses with the configured reward functions: in a fixed order, under a fixed seed, bounded.

Wherever it runs (a rollout worker, a reward pool task, the coordinator), sample ``i`` of step ``s`` is scored
by each function in config order with Python's, NumPy's and torch's global RNGs seeded from (run seed, s, i)
and restored afterwards: a deterministic reward gives the same value whichever process scores it, so
bit-exact resume holds with it. One call longer than ``data.reward_timeout_s``, or one that raises, is a
RewardError: a program error naming the function, the step and the sample, never retried.
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Sequence

from rayrl.data.reward_fns import RewardSpec

SHOWN_CHARS = 200  # of the prompt and of the response, in an error message
SEED_STRIDE = 1_000_003


class RewardError(Exception):
    """A reward function raised, timed out or returned something that is not a number. The message is one
    line, written for the user, and shown whole."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _as_terms(spec: RewardSpec, value: Any) -> dict[str, float]:
    """A function's return value as metric terms: a float is ``reward/<name>``; a dict's first value is
    ``reward/<name>`` and the others ``reward/<name>/<key>``."""
    if isinstance(value, dict):
        if not value:
            raise TypeError("returned an empty dict")
        items = list(value.items())
        terms = {f"reward/{spec.name}": items[0][1], **{f"reward/{spec.name}/{k}": v for k, v in items[1:]}}
    else:
        terms = {f"reward/{spec.name}": value}
    for key, v in terms.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"returned {v!r} for {key}; a reward is a finite float (or a dict of them)")
    return {k: float(v) for k, v in terms.items()}


class Scorer:
    """Scores samples with ``specs``; one per process that scores (it holds the loaded functions and the
    thread each call runs in, so that a call can be abandoned at its timeout)."""

    def __init__(self, specs: Sequence[RewardSpec], timeout_s: float, seed: int) -> None:
        self.specs = list(specs)
        self.fns: list[Callable[..., Any]] = [s.load() for s in self.specs]
        self.timeout_s, self.seed = timeout_s, seed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    def score(self, items: Sequence[dict], texts: Sequence[str], ids: Sequence[list[int]], n: int, step: int,
              first: int) -> list[dict[str, float]]:
        """Per sample, ``{"reward": weighted sum, "reward/<name>": ..., ...}``. Sample ``j`` answers
        ``items[j // n]`` and is sample ``first + j`` of the step (its seed does not depend on where it runs)."""
        out = []
        for j, (text, response_ids) in enumerate(zip(texts, ids)):
            item, index = items[j // n], first + j
            terms: dict[str, float] = {}
            total = 0.0
            for spec, fn in zip(self.specs, self.fns):
                value = self._call(spec, fn, item, text, list(response_ids), step, index)
                total += spec.weight * value[f"reward/{spec.name}"]
                terms.update(value)
            out.append({"reward": total, **terms})
        return out

    def _call(self, spec: RewardSpec, fn: Callable[..., Any], item: dict, text: str, response_ids: list[int],
              step: int, index: int) -> dict[str, float]:
        where = f"reward function {spec.path} ({spec.key}) at step {step}, sample {index}"
        sample = f"prompt {_shown(item.get('prompt'))}, response {_shown(text)}"
        with _seeded((self.seed * SEED_STRIDE + step) * SEED_STRIDE + index):
            future = self._pool.submit(fn, item, text, response_ids)
            try:
                value = future.result(timeout=self.timeout_s)
            except FutureTimeout:
                raise RewardError(f"{where} took longer than data.reward_timeout_s={self.timeout_s:g} s; "
                                  f"{sample}") from None
            except Exception as err:  # noqa: BLE001 -- the user's code: any exception is this program error
                raise RewardError(f"{where} raised {type(err).__name__}: {err}; {sample}") from err
        try:
            return _as_terms(spec, value)
        except TypeError as err:
            raise RewardError(f"{where} {err}; {sample}") from None


class _seeded:
    """Seed the global RNGs a reward function may use (random, numpy, torch) for one call; restore after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        import numpy as np
        import torch

        self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.random.default_generator.manual_seed(self.seed % 2**63)  # CPU only: CUDA streams are the engine's

    def __exit__(self, *exc: object) -> None:
        import numpy as np
        import torch

        py, npy, th = self._states
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)
