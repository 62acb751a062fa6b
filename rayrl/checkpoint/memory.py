"""A rank's own share of a sharded state dict as plain host tensors, and putting it back in place.

The in-memory copy of a checkpoint (``runner.checkpoint.memory_replicas``) holds each actor rank's local
shards, not the global tensors DCP writes: recovery loads it back into the same rank of the same world
size, so no resharding (and no collective) is needed, and the copy is exactly what the rank had. Pure
torch: what keeps the copies, and where, is the runtime's business.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed.tensor import DTensor


def local_copy(state: Any) -> Any:
    """A deep copy of ``state`` on the host: each DTensor as a clone of its local shard, each tensor
    cloned, every other value deep-copied (optimizer hyperparameters, step counts)."""
    if isinstance(state, DTensor):
        return state.to_local().detach().to("cpu", copy=True)
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: local_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(local_copy(v) for v in state)
    return copy.deepcopy(state)


def restore_local(state: Any, saved: Any, where: str = "state") -> Any:
    """Put ``saved`` (from ``local_copy`` of a state of the same structure) back into ``state``: tensors
    in place (a DTensor's local shard), other values replaced; returns the updated ``state``. A structure
    or shape that does not match raises ValueError naming the entry (the copy is of another model)."""
    if isinstance(state, torch.Tensor):
        target = state.to_local() if isinstance(state, DTensor) else state
        if not isinstance(saved, torch.Tensor) or saved.shape != target.shape or saved.dtype != target.dtype:
            raise ValueError(f"{where}: the memory copy holds {_describe(saved)}, the rank {_describe(target)}")
        with torch.no_grad():
            target.copy_(saved)
        return state
    if isinstance(state, dict):
        if not isinstance(saved, dict) or saved.keys() != state.keys():
            raise ValueError(f"{where}: the memory copy's entries differ from the rank's")
        for key in state:
            state[key] = restore_local(state[key], saved[key], f"{where}.{key}")
        return state
    if isinstance(state, list):
        if not isinstance(saved, list) or len(saved) != len(state):
            raise ValueError(f"{where}: the memory copy's entries differ from the rank's")
        state[:] = [restore_local(s, v, f"{where}[{i}]") for i, (s, v) in enumerate(zip(state, saved))]
        return state
    return copy.deepcopy(saved)


def copy_nbytes(state: Any) -> int:
    """Bytes of tensor data in ``state`` (a DTensor counts its local shard): what a copy of it holds."""
    if isinstance(state, DTensor):
        state = state.to_local()
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(copy_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(copy_nbytes(v) for v in state)
    return 0


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__
