"""The benchmark model and real gloo processes running rayrl's own actor rank.

``spawn`` starts ``world_size`` processes (torch.multiprocessing, spawn). ``model_config`` scales the
built-in Llama so that weights + AdamW state come to a requested size; ``actor_config`` makes the full
rayrl config an ``ActorWorker`` (rayrl.workers.actor, used here without Ray) is built from.
"""

from __future__ import annotations

import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp

from benchmarks.common import CONFIG
from rayrl.config import ModelConfig, RayRLConfig, load_config

WORLD_SIZE = 2
HEAD_DIM = 64
BYTES_PER_PARAM = 12  # float32 weight + AdamW exp_avg + exp_avg_sq
SIZE_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size")


def model_config(state_gb: float) -> ModelConfig:
    """A Llama of the built-in family whose weights + AdamW state come to about ``state_gb`` GB.

    Width grows with size (64 for tiny states, 1024 from 0.3 GB) and depth fills the rest, so the
    tensors have realistic shapes (a few MB to tens of MB each) rather than one huge blob.
    """
    hidden = 1024 if state_gb >= 0.3 else 512 if state_gb >= 0.05 else 256 if state_gb >= 0.005 else 64
    inter = hidden * 11 // 4
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * BYTES_PER_PARAM
    layers = max(1, round(state_gb * 1e9 / per_layer))
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=hidden // HEAD_DIM,
                       intermediate_size=inter)


def model_overrides(state_gb: float) -> list[str]:
    """The benchmark model as ``actor.model.*`` overrides for the driver."""
    cfg = model_config(state_gb)
    return [f"actor.model.{k}={getattr(cfg, k)}" for k in SIZE_KEYS]


def actor_config(state_gb: float) -> RayRLConfig:
    """The default job's config with the benchmark model and ``WORLD_SIZE`` actor ranks."""
    return load_config(str(CONFIG), [*model_overrides(state_gb), f"actor.world_size={WORLD_SIZE}"])


def spawn(fn: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE) -> Any:
    """Run ``fn(rank, world_size, port, *args)`` in ``world_size`` processes; returns rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="rayrl-bench-") as tmp:
        out = Path(tmp) / "rank0.pkl"
        mp.spawn(_entry, args=(world_size, _free_port(), fn, args, str(out)), nprocs=world_size, join=True)
        return pickle.loads(out.read_bytes())


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    result = fn(rank, world_size, port, *args)
    if rank == 0:
        Path(out).write_bytes(pickle.dumps(result))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
