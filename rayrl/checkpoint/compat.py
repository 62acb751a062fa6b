"""Before a DCP checkpoint is loaded: can it be read without running code, and does it fit the model?

Two traps of torch.distributed.checkpoint's own reader make this module necessary:

- it unpickles ``.metadata`` with plain ``pickle.load`` and every non-tensor item of the ``.distcp`` files
  (optimizer hyper-parameters, e.g. ``lr``) with torch's loader and weights_only off, so a crafted checkpoint
  runs code on load. ``read_dcp_metadata`` unpickles the metadata with an allow-list of DCP's own classes and
  loads every non-tensor item with ``weights_only=True`` first: DCP's later load then only reads bytes that
  were vetted, and a checkpoint that carries code is refused, naming the file.
- a checkpoint of another model shape fails deep inside DCP's planner with an assertion about a read
  request. ``model_mismatch`` compares the saved shapes with the model's before any collective starts, so
  the user gets one line naming the tensor and both shapes.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata

from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.format import DCP_METADATA_FILE, MODEL_KEY
from rayrl.checkpoint.safe_io import load_torch
from rayrl.checkpoint.storage import Storage, storage_for

_DCP_METADATA_CLASSES = ("Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                         "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
_ALLOWED_GLOBALS = frozenset(
    {("torch.distributed.checkpoint.metadata", name) for name in _DCP_METADATA_CLASSES}
    | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
       ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
       ("collections", "OrderedDict")}
    | {("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
)


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the plain data classes DCP writes into ``.metadata``; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which DCP metadata never holds")
        return super().find_class(module, name)


def read_dcp_metadata(dcp_dir: str | os.PathLike[str], storage: Storage | None = None) -> Metadata:
    """The DCP metadata of ``dcp_dir``, read without running code; also vets every non-tensor item.

    Raises ``CheckpointError`` naming the file when the metadata or an item is refused or unreadable.
    """
    storage = storage or storage_for(dcp_dir)
    root = storage.join(dcp_dir)
    path = storage.join(root, DCP_METADATA_FILE)
    try:
        with storage.open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"refused (a checkpoint must not run code when loaded): {e}") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(path, f"unreadable DCP metadata: {type(e).__name__}: {e}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(path, f"holds a {type(metadata).__name__}, not DCP metadata")
    _vet_byte_items(storage, root, metadata)
    return metadata


def _vet_byte_items(storage: Storage, root: Path | str, metadata: Metadata) -> None:
    """Load every non-tensor item with ``weights_only=True``: DCP itself would unpickle them unrestricted."""
    byte_fqns = {fqn for fqn, md in metadata.state_dict_metadata.items() if isinstance(md, BytesStorageMetadata)}
    for index, info in (metadata.storage_data or {}).items():
        if index.fqn not in byte_fqns:
            continue
        name = str(info.relative_path)
        if "/" in name or name in ("", ".", "..") or info.transform_descriptors:
            raise CheckpointError(storage.join(root, DCP_METADATA_FILE),
                                  f"item {index.fqn} is stored in an unsupported way")
        path = storage.join(root, name)
        try:
            with storage.open(path, "rb") as f:
                f.seek(info.offset)
                blob = f.read(info.length)
        except OSError as e:
            raise CheckpointError(path, f"unreadable: {e}") from None
        try:
            load_torch(io.BytesIO(blob))
        except CheckpointError as e:
            raise CheckpointError(path, f"item {index.fqn}: {e.reason}") from None


def saved_shapes(metadata: Metadata, key: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors saved under the top-level state key ``key`` (e.g. ``model``), by their FQN."""
    prefix = f"{key}."
    return {fqn[len(prefix):]: tuple(md.size) for fqn, md in metadata.state_dict_metadata.items()
            if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)}


def shape_mismatch(saved: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]) -> str | None:
    """The first difference between saved and expected ``{fqn: shape}`` (and how many more), else None."""
    problems = [f"{k} has shape {list(saved[k])} in the checkpoint, {list(v)} in the model"
                for k, v in expected.items() if k in saved and tuple(saved[k]) != tuple(v)]
    problems += [f"{k} is in the model but not in the checkpoint" for k in expected if k not in saved]
    problems += [f"{k} is in the checkpoint but not in the model" for k in saved if k not in expected]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more difference{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return problems[0] + more


def model_mismatch(dcp_dir: str | os.PathLike[str], expected: Mapping[str, Sequence[int]], key: str = MODEL_KEY,
                   storage: Storage | None = None) -> str | None:
    """How the tensors saved under ``key`` in ``dcp_dir`` differ from ``expected``; None if they fit.

    Reads the metadata safely (``read_dcp_metadata``), so calling this first also protects the load after it.
    """
    return shape_mismatch(saved_shapes(read_dcp_metadata(dcp_dir, storage), key), expected)
