"""Adapters that let the checkpoint manager save and load each role's state without knowing what it is."""

from __future__ import annotations

import os
from typing import Any

from rayrl.checkpoint.format import ACTOR_DIR, DATA_DIR, DATA_STATE_FILE, HF_DIR, ROLLOUT_DIR
from rayrl.checkpoint.manifest import file_digest
from rayrl.checkpoint.safe_io import load_torch, save_torch
from rayrl.workers.fleet import Fleet

Digests = dict[str, dict]


def _merged(parts: list[Digests | None]) -> Digests | None:
    if any(p is None for p in parts):
        return None
    return {k: v for p in parts for k, v in p.items()}


class ActorPart:
    """Every actor rank writes its own DCP shard and extra state (RNG, LR schedule) into ``actor/``."""

    name = ACTOR_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_all(self.fleet.actor.call("save_checkpoint", directory, async_save),
                                           "actor"))

    def poll_save(self, block: bool) -> Digests | None:
        return _merged(self.fleet.wait_all(self.fleet.actor.call("checkpoint_status", block), "actor"))

    def load(self, directory: str) -> None:
        self.fleet.wait_all(self.fleet.actor.call("load_checkpoint", directory), "actor")


class HFExportPart:
    """The policy as a Hugging Face model directory in ``hf/`` (``runner.checkpoint.export_hf_every``), written
    by the actor ranks in parallel. Saved with its step (the manifest covers it, retention deletes it with the
    step); never loaded: resume reads the actor's own shards."""

    name = HF_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_all(self.fleet.actor.call("export_hf", directory), "actor"))

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("the export is always written synchronously")

    def load(self, directory: str) -> None:
        raise AssertionError("an export is never loaded back")


class RolloutPart:
    """Each rollout worker's sampling state (its generator), into ``rollout/``."""

    name = ROLLOUT_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_all(self.fleet.rollout.call("save_checkpoint", directory), "rollout"))

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("rollout state is always written synchronously")

    def load(self, directory: str) -> None:
        self.fleet.wait_all(self.fleet.rollout.call("load_checkpoint", directory), "rollout")


class DataPart:
    """The coordinator's data stream (position, epoch, sampler RNG), into ``data/data.pt``."""

    name = DATA_DIR

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def save(self, directory: str, async_save: bool) -> Digests | None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, DATA_STATE_FILE)
        save_torch(self.stream.state_dict(), path)
        return {DATA_STATE_FILE: file_digest(path)}

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("data state is always written synchronously")

    def load(self, directory: str) -> None:
        self.stream.load_state_dict(load_torch(os.path.join(directory, DATA_STATE_FILE)))
