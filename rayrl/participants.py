"""Adapters that let the checkpoint manager save and load each role's state without knowing what it is."""

from __future__ import annotations

import json
from typing import Any

from rayrl.checkpoint.format import (
    ACTOR_DIR, DATA_DIR, DATA_STATE_FILE, HF_DIR, ROLLOUT_DIR, ROLLOUTS_AHEAD_FILE, TRAINER_STATE_FILE,
)
from rayrl.checkpoint.storage import storage_for
from rayrl.checkpoint.torch_files import read_torch, write_torch
from rayrl.workers.fleet import Fleet

Digests = dict[str, dict]


def _merged(parts: list[Digests | None]) -> Digests | None:
    if any(p is None for p in parts):
        return None
    return {k: v for p in parts for k, v in p.items()}


def _saved_run(directory: str, storage_options: Any) -> dict[str, Any]:
    """The trainer state of the step that ``directory`` (a part of it) belongs to: the world sizes it was
    saved with (what every worker must find) and its step (what the RNG of a worker beyond them derives from)."""
    storage = storage_for(directory, storage_options)
    return json.loads(storage.read_bytes(storage.join(storage.parent(storage.join(directory)), TRAINER_STATE_FILE)))


class ActorPart:
    """Every actor rank writes its own DCP shard and extra state (RNG, LR schedule) into ``actor/``."""

    name = ACTOR_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_checkpoint(self.fleet.actor.call("save_checkpoint", directory, async_save),
                                                  "actor", f"checkpoint save into {directory}"))

    def poll_save(self, block: bool) -> Digests | None:
        return _merged(self.fleet.wait_checkpoint(self.fleet.actor.call("checkpoint_status", block), "actor",
                                                  "waiting for the checkpoint save in flight"))

    def load(self, directory: str) -> None:
        saved = _saved_run(directory, self.fleet.cfg.runner.checkpoint.storage_options)
        self.fleet.wait_checkpoint(self.fleet.actor.call("load_checkpoint", directory,
                                                         saved["world_sizes"]["actor"], saved["global_step"]),
                                   "actor", f"checkpoint load from {directory}")


class HFExportPart:
    """The policy as a Hugging Face model directory in ``hf/`` (``runner.checkpoint.export_hf_every``), written
    by the actor ranks in parallel. Saved with its step (the manifest covers it, retention deletes it with the
    step); never loaded: resume reads the actor's own shards."""

    name = HF_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_checkpoint(self.fleet.actor.call("export_hf", directory), "actor",
                                                  f"HF export into {directory}"))

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("the export is always written synchronously")

    def load(self, directory: str) -> None:
        raise AssertionError("an export is never loaded back")


class RolloutPart:
    """What each rollout worker's sampling depends on (its engine's seed scheme), into ``rollout/``."""

    name = ROLLOUT_DIR

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def save(self, directory: str, async_save: bool) -> Digests | None:
        return _merged(self.fleet.wait_checkpoint(self.fleet.rollout.call("save_checkpoint", directory), "rollout",
                                                  f"checkpoint save into {directory}"))

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("rollout state is always written synchronously")

    def load(self, directory: str) -> None:
        saved = _saved_run(directory, self.fleet.cfg.runner.checkpoint.storage_options)
        self.fleet.wait_checkpoint(self.fleet.rollout.call("load_checkpoint", directory,
                                                           saved["world_sizes"]["rollout"]),
                                   "rollout", f"checkpoint load from {directory}")


class DataPart:
    """The coordinator's data stream (position, epoch, sampler RNG) into ``data/data.pt`` and, with rollouts
    ahead of training (rollout.async_steps), the finished rollouts of later steps whose prompts the stream
    already handed out into ``data/rollouts_ahead.pt``: one participant, so that the two always agree.
    ``data``: the rollout pipeline (rayrl.pipeline), whose state is both."""

    name = DATA_DIR

    def __init__(self, data: Any, storage_options: Any) -> None:
        self.data = data
        self.storage_options = storage_options

    def save(self, directory: str, async_save: bool) -> Digests | None:
        storage = storage_for(directory, self.storage_options)
        storage.makedirs(directory)
        state = self.data.state_dict()
        digests = {DATA_STATE_FILE: write_torch(storage, storage.join(directory, DATA_STATE_FILE), state["stream"])}
        if state["ahead"]:
            digests[ROLLOUTS_AHEAD_FILE] = write_torch(storage, storage.join(directory, ROLLOUTS_AHEAD_FILE),
                                                       state["ahead"])
        return digests

    def poll_save(self, block: bool) -> Digests | None:
        raise AssertionError("data state is always written synchronously")

    def load(self, directory: str) -> None:
        """A step saved with nothing ahead (synchronous) has no rollouts file: the buffer starts empty."""
        storage = storage_for(directory, self.storage_options)
        ahead_path = storage.join(directory, ROLLOUTS_AHEAD_FILE)
        ahead = read_torch(storage, ahead_path) if storage.isfile(ahead_path) else []
        self.data.load_state_dict({"stream": read_torch(storage, storage.join(directory, DATA_STATE_FILE)),
                                   "ahead": ahead})
