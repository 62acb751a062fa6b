"""Checkpoint exceptions.

They keep ``path`` and ``reason`` as their ``args`` so they survive pickling: Ray re-raises worker
exceptions on the caller after a round trip through pickle.
"""

from __future__ import annotations

import os


class CheckpointError(Exception):
    """A checkpoint file or directory could not be written or read safely."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class CheckpointInvalid(CheckpointError):
    """A step directory is incomplete or damaged: resume must not use it."""


class NoValidCheckpoint(CheckpointError):
    """Steps exist (or the tracker names one) and none of them verifies: resuming would silently start over.
    ``steps`` maps each step to why it failed; nothing was moved, renamed or deleted."""

    def __init__(self, path: str | os.PathLike[str], steps: dict[int, str]) -> None:
        CheckpointError.__init__(self, path, "; ".join(f"global_step_{s}: {why}" for s, why in steps.items())
                                 or "the tracker names a step, but no global_step_* directory exists")
        self.args = (str(path), steps)
        self.steps = steps
class WorkerLost(Exception):
    """Base of the errors that mean the workers writing or reading a part are gone (process, node, object,
    a hang), not that the checkpoint failed: a manager lets them through unchanged so that the runtime
    recovers. The runtime's ``rayrl.failures.InfraFailure`` is one; this package does not know it."""
