"""Does every worker see the checkpoint storage the coordinator writes? (the approach of Ray Train's storage
validation). The coordinator writes a marker holding a fresh nonce under the checkpoint directory, every
worker reads it back, the coordinator removes it. A worker on a node whose disk merely has a directory of
the same name (a node-local ``runner.output_dir``) reads nothing there, or a stale nonce: caught before
step 1, not at the first save after ``save_interval`` steps of compute.

Through fsspec on path strings, so that the same code checks a local path and an object-store URL.
"""

from __future__ import annotations

import uuid

import fsspec

from rayrl.checkpoint.format import STORAGE_MARKER_FILE


def write_marker(checkpoint_dir: str) -> tuple[str, str]:
    """Write a marker with a fresh nonce under ``checkpoint_dir`` (created if need be); (its path, the nonce)."""
    fs, root = fsspec.core.url_to_fs(checkpoint_dir)
    fs.makedirs(root, exist_ok=True)
    path = f"{checkpoint_dir.rstrip('/')}/{STORAGE_MARKER_FILE}"
    nonce = uuid.uuid4().hex
    fs.pipe_file(fsspec.core.url_to_fs(path)[1], nonce.encode())
    return path, nonce


def read_marker(path: str, nonce: str) -> str | None:
    """None when ``path`` holds ``nonce``; otherwise what was found instead (for the error message)."""
    fs, local = fsspec.core.url_to_fs(path)
    try:
        found = fs.cat_file(local)
    except FileNotFoundError:
        return "the marker is not there"
    except OSError as err:
        return f"reading it failed: {type(err).__name__}: {err}"
    if found != nonce.encode():
        return "it holds another run's or an older marker (a different filesystem at the same path)"
    return None


def remove_marker(path: str) -> None:
    """Remove the marker; nothing when it is already gone."""
    fs, local = fsspec.core.url_to_fs(path)
    try:
        fs.rm_file(local)
    except FileNotFoundError:
        pass
