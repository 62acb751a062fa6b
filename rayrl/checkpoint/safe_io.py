"""Crash-safe file writes and safe torch file IO.

Every write goes to a hidden temp file in the same directory (same filesystem, so the final
``os.replace`` is atomic), is fsynced, renamed over the target, and the directory is fsynced so the
rename itself survives a power loss. A crash leaves either the old file or the new one, plus at worst a
``.tmp-*`` leftover that ``CheckpointDir.cleanup_temp_dirs`` removes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.format import TEMP_PREFIX
_MAX_BASE = 200  # keeps temp names under the usual 255-byte name limit


def temp_name(base: str) -> str:
    """A hidden, unique sibling name for ``base``; everything named like this is disposable."""
    return f"{TEMP_PREFIX}{base[:_MAX_BASE]}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist a directory's entries (creations, renames) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync directories; nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Fsync every file and directory under ``root`` (bottom-up), whoever wrote them.

    Writers should already have synced their files; this is cheap then, and it covers the ones
    that did not before a rename makes the directory look complete.
    """
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a temp file that replaces ``path`` only if the block finishes; removed otherwise."""
    target = Path(path)
    tmp = target.with_name(temp_name(target.name))
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or all of the new."""
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` with the same all-or-nothing guarantee as ``atomic_write_bytes``."""
    import torch  # here, not at the top: the driver reads manifests and must not pay torch's import

    with _atomic_file(path) as f:
        torch.save(obj, f)


def load_torch(path: str | os.PathLike[str]) -> Any:
    """Load a torch file onto the CPU with ``weights_only=True``: no code in the file ever runs."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"refused by torch.load(weights_only=True): {_short(e)}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(path, f"unreadable torch file: {_short(e)}") from e


def _short(e: BaseException) -> str:
    """The informative line of torch's long multi-paragraph load errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln
    return lines[0] if lines else type(e).__name__
