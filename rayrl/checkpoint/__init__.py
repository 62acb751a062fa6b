"""Checkpoint files on disk: format (every name, in format.py), layout, atomic commit, manifest, retention,
RNG state, safe torch IO.

Knows nothing of GRPO, Ray or models; the checkpoint manager calls these from workers and the coordinator.
"""

from __future__ import annotations

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid, NoValidCheckpoint
from rayrl.checkpoint.format import ARCHIVE_PREFIX, MANIFEST_FILE, STEP_PREFIX, TEMP_PREFIX, TRACKER_FILE
from rayrl.checkpoint.layout import CheckpointDir, parse_step
from rayrl.checkpoint.manifest import (
    build_manifest,
    file_digest,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)
from rayrl.checkpoint.retention import select_steps_to_delete
from rayrl.checkpoint.safe_io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    fsync_tree,
    load_torch,
    save_torch,
)

__all__ = [
    "ARCHIVE_PREFIX",
    "MANIFEST_FILE",
    "STEP_PREFIX",
    "TEMP_PREFIX",
    "TRACKER_FILE",
    "CheckpointDir",
    "CheckpointError",
    "CheckpointInvalid",
    "NoValidCheckpoint",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "build_manifest",
    "capture_rng_state",
    "file_digest",
    "fsync_dir",
    "fsync_tree",
    "load_torch",
    "parse_step",
    "read_manifest",
    "restore_rng_state",
    "save_torch",
    "select_steps_to_delete",
    "verify_checkpoint",
    "write_manifest",
]


def __getattr__(name: str):
    """The RNG helpers import torch: loaded on first use, so that the driver (which reads manifests only)
    starts without torch."""
    if name in ("capture_rng_state", "restore_rng_state"):
        from rayrl.checkpoint import rng

        return getattr(rng, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
