"""RolloutWorker: one generation engine that samples responses and receives each new policy."""

from __future__ import annotations

import os
from typing import Any

import torch

from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.checkpoint.manifest import file_digest
from rayrl.checkpoint.rng import derived_seed
from rayrl.checkpoint.safe_io import load_torch, save_torch
from rayrl.engines import Rollouts, make_engine
from rayrl.workers.base import WorkerBase

STATE_FILE = "worker_{index}.pt"


class RolloutWorker(WorkerBase):
    def __init__(self, cfg: Any, index: int) -> None:
        super().__init__(cfg, role="rollout", index=index)
        self.engine = make_engine(cfg, index)

    def generate(self, prompts: list[str], n: int, step: int) -> Rollouts:
        self.test_fault_hook(step)  # TEST-ONLY hang injection; a no-op unless RAYRL_TEST_HANG_AT_STEP is set
        return self.engine.generate(prompts, n, step)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.load_weights(state_dict)

    def save_checkpoint(self, directory: str) -> dict[str, dict]:
        """Write the engine's sampling state; returns the digest of the file written."""
        os.makedirs(directory, exist_ok=True)
        name = STATE_FILE.format(index=self.index)
        save_torch(self.engine.state_dict(), os.path.join(directory, name))
        return {name: file_digest(os.path.join(directory, name))}

    def load_checkpoint(self, directory: str, saved_workers: int, step: int) -> None:
        """Restore the engine's sampling state. A worker the checkpoint was saved with must find its file
        (else CheckpointInvalid); one beyond ``saved_workers`` (more workers than were saved) has none, and
        its engine is seeded with ``derived_seed(seed, "rollout", index, step)``."""
        name = STATE_FILE.format(index=self.index)
        path = os.path.join(directory, name)
        if self.index >= saved_workers:
            self.engine.reseed(derived_seed(self.cfg.runner.seed, "rollout", self.index, step))
        elif not os.path.exists(path):
            raise CheckpointInvalid(directory, f"missing {name}: rollout worker {self.index} of the "
                                    f"{saved_workers} saved has no sampling state to load")
        else:
            self.engine.load_state_dict(load_torch(path))
