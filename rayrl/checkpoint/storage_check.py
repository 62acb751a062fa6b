"""Does every worker see the checkpoint storage the coordinator writes? (the approach of Ray Train's storage
validation). The coordinator writes a marker holding a fresh nonce under the checkpoint directory, every
worker reads it back, the coordinator removes it. A worker on a node whose disk merely has a directory of
the same name (a node-local ``runner.output_dir``) reads nothing there, or a stale nonce: caught before
step 1, not at the first save after ``save_interval`` steps of compute.

Through the checkpoint storage interface, so that the same code checks a local path and an object-store URL
(whose ``storage_options`` each worker needs as much as the coordinator).
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from rayrl.checkpoint.format import STORAGE_MARKER_FILE
from rayrl.checkpoint.storage import storage_for


def write_marker(checkpoint_dir: str, options: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Write a marker with a fresh nonce under ``checkpoint_dir`` (created if need be); (its path, the nonce)."""
    storage = storage_for(checkpoint_dir, options)
    storage.makedirs(checkpoint_dir)
    path = str(storage.join(checkpoint_dir, STORAGE_MARKER_FILE))
    nonce = uuid.uuid4().hex
    storage.write_bytes(path, nonce.encode())
    return path, nonce


def read_marker(path: str, nonce: str, options: Mapping[str, Any] | None = None) -> str | None:
    """None when ``path`` holds ``nonce``; otherwise what was found instead (for the error message)."""
    try:
        found = storage_for(path, options).read_bytes(path)
    except FileNotFoundError:
        return "the marker is not there"
    except OSError as err:
        return f"reading it failed: {type(err).__name__}: {err}"
    if found != nonce.encode():
        return "it holds another run's or an older marker (a different filesystem at the same path)"
    return None


def remove_marker(path: str, options: Mapping[str, Any] | None = None) -> None:
    """Remove the marker; nothing when it is already gone."""
    try:
        storage_for(path, options).remove(path)
    except FileNotFoundError:
        pass
