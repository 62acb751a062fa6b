"""Small torch files (RNG, LR step, sampling and data state) written to and read from a checkpoint's storage.

Serialised in memory, then written whole (``Storage.write_bytes``: temp file + fsync + rename locally, one
PUT on an object store), so the digest for the manifest comes from the bytes written, not a second read.
Read back with ``torch.load(weights_only=True)`` only (``safe_io.load_torch``).
"""

from __future__ import annotations

import io
from typing import Any

from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.layout import StepPath
from rayrl.checkpoint.manifest import Digest, RunningDigest
from rayrl.checkpoint.safe_io import load_torch
from rayrl.checkpoint.storage import Storage


def write_torch(storage: Storage, path: StepPath, obj: Any) -> Digest:
    """``torch.save`` of ``obj`` to ``path``, all or nothing; the digest of the bytes written."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    storage.write_bytes(path, bytes(data))
    digest = RunningDigest()
    digest.update(data)
    return digest.digest()


def read_torch(storage: Storage, path: StepPath) -> Any:
    """The object in ``path``, loaded onto the CPU with ``weights_only=True``; ``CheckpointError`` naming
    the file when it is missing, refused or unreadable."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist") from None
    try:
        return load_torch(io.BytesIO(data))
    except CheckpointError as err:
        raise CheckpointError(path, err.reason) from None
