"""rayrl's checkpoint path without Ray: real ActorWorker ranks in gloo processes, led by rank 0.

In a run, the coordinator's checkpoint manager calls every actor rank through Ray. Here each spawned
process builds the real ``ActorWorker`` (its own process group, FSDP2 policy, AdamW, the async-save gloo
group and stager) and rank 0 plays the coordinator: ``Lockstep.call(method, *args)`` broadcasts the call,
every rank runs it, and rank 0 gets the list of every rank's result once all have finished (so the time of
a call is the slowest rank's). ``LockstepActorPart`` is ``rayrl.participants.ActorPart`` over this
transport, so the real ``DefaultCheckpointManager`` drives saves, commits and resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict, set_state_dict)

from benchmarks.common import disk_read, disk_write, drop_caches, touched_buffer
from benchmarks.dist import actor_config, spawn
from rayrl.checkpoint.format import MODEL_KEY, OPTIMIZER_KEY
from rayrl.checkpoint.manager import DefaultCheckpointManager
from rayrl.workers.actor import ActorWorker

Digests = dict[str, dict]
COLLECTIVE_TIMEOUT_S = 300  # a lost rank fails the benchmark instead of hanging it for step_timeout_s


class RankOps:
    """One rank: rayrl's ActorWorker as the coordinator drives it, plus the baselines it is compared with."""

    def __init__(self, rank: int, world_size: int, port: int, state_gb: float) -> None:
        cfg = actor_config(state_gb)
        cfg.runner.step_timeout_s = COLLECTIVE_TIMEOUT_S
        self.rank = rank
        self.worker = ActorWorker(cfg, rank, world_size)
        self.worker.setup("127.0.0.1", port)
        self.model, self.optimizer = self.worker.model, self.worker.optimizer
        _one_adamw_step(self.model, self.optimizer)
        self.local_bytes = sum(t.nbytes for t in _local_tensors(get_state_dict(self.model, self.optimizer)))
        self._buf: bytearray | None = None

    # rayrl: the methods the coordinator calls on every actor rank
    def save_checkpoint(self, directory: str, async_save: bool) -> Digests | None:
        return self.worker.save_checkpoint(directory, async_save)

    def checkpoint_status(self, block: bool) -> Digests | None:
        return self.worker.checkpoint_status(block)

    def checkpoint_staged(self) -> float:
        return self.worker.ckpt.wait_staged()

    def load_checkpoint(self, directory: str) -> None:
        # saved by these same ranks: each has its own state (the step seeds only ranks beyond the saved ones)
        self.worker.load_checkpoint(directory, saved_world_size=self.worker.world_size, step=0)

    # the disk itself: this rank's share of the bytes, one file per rank, fsynced
    def disk_save(self, directory: str) -> None:
        disk_write(Path(directory) / f"rank{self.rank}.bin", self.local_bytes, memoryview(self._buffer()))

    def disk_load(self, directory: str) -> int:
        return disk_read(Path(directory) / f"rank{self.rank}.bin", self._buffer())

    def _buffer(self) -> bytearray:
        if self._buf is None:
            self._buf = touched_buffer()
        return self._buf

    # a plain DCP save / load of the same state dict
    def dcp_save(self, directory: str) -> None:
        dcp.save(self._state(), checkpoint_id=directory)

    def dcp_load(self, directory: str) -> None:
        state = self._state()
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(self.model, self.optimizer, model_state_dict=state[MODEL_KEY],
                       optim_state_dict=state[OPTIMIZER_KEY])

    def _state(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {MODEL_KEY: model_sd, OPTIMIZER_KEY: optim_sd}

    # what a user without DCP writes: the full state gathered to rank 0, one torch.save file
    def torch_save(self, path: str) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            with open(path, "wb") as f:
                torch.save({MODEL_KEY: model_sd, OPTIMIZER_KEY: optim_sd}, f)
                f.flush()
                os.fsync(f.fileno())

    def torch_load(self, path: str) -> None:
        """Rank 0 reads the file; the tensors are broadcast and resharded into every rank."""
        full = torch.load(path, weights_only=True) if self.rank == 0 else {MODEL_KEY: {}, OPTIMIZER_KEY: {}}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        # two calls: set_state_dict skips the model on ranks whose model dict is empty (they would hang)
        set_model_state_dict(self.model, full[MODEL_KEY], options=options)
        set_optimizer_state_dict(self.model, self.optimizer, full[OPTIMIZER_KEY], options=options)

    def state_bytes(self) -> int:
        return self.local_bytes

    def drop_caches(self) -> bool:
        return drop_caches() if self.rank == 0 else True

    def shutdown(self) -> None:
        self.worker.shutdown()


class Lockstep:
    """Rank 0 leads (``call``); the other ranks ``follow``, running the same calls in the same order."""

    def __init__(self, ops: RankOps) -> None:
        self.ops = ops

    def call(self, method: str, *args: Any) -> list[Any]:
        dist.broadcast_object_list([(method, args)], src=0)
        return self._run(method, args)

    def _run(self, method: str, args: tuple) -> list[Any]:
        result = getattr(self.ops, method)(*args)
        every = [None] * dist.get_world_size() if self.ops.rank == 0 else None
        dist.gather_object(result, every, dst=0)
        return every

    def follow(self) -> None:
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            method, args = box[0]
            if method is None:
                return
            self._run(method, args)

    def stop(self) -> None:
        dist.broadcast_object_list([(None, ())], src=0)


class LockstepActorPart:
    """``rayrl.participants.ActorPart`` with Lockstep calls in place of Ray calls."""

    name = "actor"

    def __init__(self, lead: Lockstep) -> None:
        self.lead = lead

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.lead.call("save_checkpoint", directory, async_save))

    def poll_save(self, block: bool) -> Digests | None:
        return _merged(self.lead.call("checkpoint_status", block))

    def load(self, directory: str) -> None:
        self.lead.call("load_checkpoint", directory)


def manager(lead: Lockstep, checkpoint_dir: Path | str, async_save: bool) -> DefaultCheckpointManager:
    """The default manager with the job's checkpoint config, async or not."""
    cfg = dataclasses.replace(lead.ops.worker.cfg.runner.checkpoint, async_save=async_save)
    return DefaultCheckpointManager(cfg, str(checkpoint_dir))


def run_lockstep(body: Callable[..., Any], state_gb: float, *args: Any) -> Any:
    """``body(lead, *args)`` on rank 0 of two ActorWorker ranks of a ``state_gb`` state; its result."""
    return spawn(_main, body, state_gb, args)


def _main(rank: int, world_size: int, port: int, body: Callable[..., Any], state_gb: float, args: tuple) -> Any:
    ops = RankOps(rank, world_size, port, state_gb)
    logging.getLogger("rayrl").setLevel(logging.WARNING)  # no "Saved checkpoint" line per measured save
    lead = Lockstep(ops)
    try:
        if rank != 0:
            return lead.follow()
        try:
            return body(lead, *args)
        finally:
            lead.stop()
    finally:
        ops.shutdown()


def _merged(parts: list[Digests | None]) -> Digests | None:
    if any(p is None for p in parts):
        return None
    return {k: v for p in parts for k, v in p.items()}


def _one_adamw_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """So that the optimizer state (exp_avg, exp_avg_sq) exists, as in any checkpoint after step 1."""
    ids = torch.randint(4, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _local_tensors(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _local_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _local_tensors(v)
    elif isinstance(obj, torch.Tensor):
        yield obj.to_local() if hasattr(obj, "to_local") else obj
