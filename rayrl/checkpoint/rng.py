"""Capture and restore every global RNG a worker's results depend on: Python, NumPy, torch CPU, CUDA.

The captured dict holds only ints, floats, strings, tuples, lists and tensors, so it round-trips
through ``save_torch`` and ``load_torch`` (``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_KEYS = ("python", "numpy", "torch_cpu", "cuda")


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of all global RNGs of this process (CUDA: every visible device, if any)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(key.astype(np.int64)),  # uint32 tensors are not weights_only-loadable
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch_cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back a snapshot from ``capture_rng_state`` (possibly loaded from disk)."""
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}")
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["key"].numpy(), dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    _restore_cuda(list(state["cuda"]))


def _restore_cuda(states: list[torch.Tensor]) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(states) != available:
        log.warning(
            "RNG state has %d CUDA device states, this process sees %d devices: restoring the first %d",
            len(states), available, min(len(states), available),
        )
    for device, s in enumerate(states[:available]):
        torch.cuda.set_rng_state(s, device)


def derived_seed(seed: int, role: str, index: int, step: int) -> int:
    """The seed of a rank or worker that a checkpoint holds no RNG state for: resuming with more actor ranks
    or rollout workers than were saved. A stable 63-bit hash of the run's seed, the role, the index and the
    step, so that every resume at that size draws the same numbers and no two of them share a stream."""
    digest = hashlib.sha256(f"rayrl-rng-v1:{seed}:{role}:{index}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rng_state(seed: int) -> None:
    """Seed every global RNG of this process (Python, NumPy, torch CPU and CUDA) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
