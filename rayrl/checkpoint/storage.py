"""Where checkpoint files live: one small interface over a local filesystem and any fsspec filesystem.

Paths are plain strings throughout (``/data/run/checkpoints`` or ``s3://bucket/prefix``), so a URL survives
every join; ``storage_for(path, options)`` picks the implementation from the path alone.

The two differ in how a step becomes visible (the commit rule), and nowhere else:

- ``LocalStorage``: a step is written into a hidden ``.tmp-`` sibling, fsynced and renamed into place
  (one atomic rename); every file write is temp file + fsync + rename.
- ``FsspecStorage`` (S3, GCS, Azure, ...: no rename): a step is written under its own name and its
  manifest, written last, is the commit record. An object is written whole or not at all (one PUT), so a
  prefix without a manifest is what a temp dir is locally: never a step. Moving a directory copies every
  object (the manifest last), then deletes the source (the manifest first), so a crash part-way leaves the
  source or the copy complete, never neither.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Mapping

from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.format import MANIFEST_FILE, TEMP_PREFIX
from rayrl.checkpoint.safe_io import atomic_write_bytes, fsync_dir, fsync_tree, temp_name

log = logging.getLogger(__name__)


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a filesystem by protocol (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in os.fspath(path)


def _local_path(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


def rename_exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


class LocalStorage:
    """The local (or mounted) filesystem: atomic rename is the commit."""

    commits_by_rename = True
    options: Mapping[str, Any] = {}

    def join(self, base: str | os.PathLike[str], *names: str) -> Path:
        return Path(_local_path(base), *names)

    def parent(self, path: str | os.PathLike[str]) -> Path:
        return Path(_local_path(path)).parent

    def name(self, path: str | os.PathLike[str]) -> str:
        return Path(_local_path(path)).name

    def same(self, a: str, b: str) -> bool:
        return os.path.realpath(_local_path(a)) == os.path.realpath(_local_path(b))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path) and not os.path.islink(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        """Names of the entries of ``path``; empty when it does not exist."""
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_files(self, root: str) -> list[str]:
        """Relative POSIX paths of every file under ``root`` (hidden ones too), sorted."""
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rels += [Path(dirpath, n).relative_to(root).as_posix() for n in filenames]
        return sorted(rels)

    def open(self, path: str, mode: str = "rb") -> BinaryIO:
        return open(path, mode)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Readers see the old content or all of the new (temp file, fsync, rename)."""
        atomic_write_bytes(path, data)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        """Delete a file or a whole directory; renamed to a ``.tmp-`` name first, so that a crash
        part-way leaves nothing that looks like a step."""
        if os.path.isdir(path) and not os.path.islink(path):
            doomed = os.path.join(os.path.dirname(path), temp_name(f"delete-{os.path.basename(path)}"))
            os.rename(path, doomed)
            fsync_dir(os.path.dirname(path))
            shutil.rmtree(doomed)
        else:
            os.unlink(path)

    def move(self, src: str, dst: str) -> None:
        os.rename(src, dst)
        fsync_dir(os.path.dirname(dst))
        if os.path.dirname(src) != os.path.dirname(dst):
            fsync_dir(os.path.dirname(src))

    def stage(self, final: str, replaced: Callable[[str], str]) -> str:
        """A fresh hidden sibling of ``final`` to write a step into (same filesystem: rename is atomic)."""
        root = os.path.dirname(final)
        os.makedirs(root, exist_ok=True)
        staging = Path(root, temp_name(os.path.basename(final)))
        staging.mkdir()
        return staging

    def check_staging(self, staging: str, final: str) -> None:
        """Refuse to publish anything but a temp dir ``stage`` made for ``final``."""
        root = os.path.dirname(final)
        if os.path.dirname(os.path.realpath(staging)) != os.path.realpath(root) or \
                not os.path.basename(staging).startswith(TEMP_PREFIX):
            raise CheckpointError(staging, f"not a temp dir of {root}")

    def publish(self, staging: str, final: str, replaced: Callable[[str], str]) -> None:
        """Make a staged step (manifest included) ``final`` with one atomic rename. An existing ``final`` is
        swapped out atomically where Linux can (``renameat2``) and handed to ``replaced`` (moved aside)."""
        root = os.path.dirname(final)
        fsync_tree(staging)
        if not os.path.exists(final):
            os.rename(staging, final)
        elif rename_exchange(staging, final):
            fsync_dir(root)
            replaced(staging)
        else:  # no atomic swap here: the old step is absent for the moment between two renames
            replaced(final)
            os.rename(staging, final)
        fsync_dir(root)

    def discard(self, staging: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def leftovers(self, root: str) -> list[str]:
        """Unfinished writes of a crashed process (``.tmp-*``): disposable."""
        return [Path(root, n) for n in self.listdir(root) if n.startswith(TEMP_PREFIX)]


# Their INFO lines say, for every client made, where it found its credentials and endpoint: noise in a
# run's log, once per process and per DCP writer.
_CHATTY_LOGGERS = ("botocore", "aiobotocore", "s3fs")


class FsspecStorage:
    """Any fsspec filesystem (``s3://``, ``gs://``, ``az://``, ...): the manifest, written last, is the commit."""

    commits_by_rename = False

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        for chatty in _CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
        self.options = dict(options or {})
        self.protocol = url.split("://", 1)[0]
        self.fs, _ = url_to_fs(url, **self.options)

    def _p(self, path: str) -> str:
        """The filesystem's own path (no protocol); listings come back in this form."""
        return self.fs._strip_protocol(path)

    def _url(self, stripped: str) -> str:
        return f"{self.protocol}://{stripped}"

    def join(self, base: str, *names: str) -> str:
        return "/".join([base.rstrip("/"), *names])

    def parent(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[0]

    def name(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    def same(self, a: str, b: str) -> bool:
        return self._p(a).rstrip("/") == self._p(b).rstrip("/")

    def _fresh(self, path: str) -> str:
        """Other processes (the workers) write here too: a cached listing would hide their objects."""
        p = self._p(path)
        self.fs.invalidate_cache(p)
        return p

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._fresh(path))

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(self._fresh(path))

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(self._fresh(path))

    def size(self, path: str) -> int:
        return int(self.fs.size(self._fresh(path)))

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(PurePosixPath(p).name for p in self.fs.ls(self._fresh(path), detail=False))
        except FileNotFoundError:
            return []

    def list_files(self, root: str) -> list[str]:
        p = self._fresh(root).rstrip("/")
        return sorted(f[len(p) + 1:] for f in self.fs.find(p) if f.startswith(p + "/"))

    def open(self, path: str, mode: str = "rb") -> BinaryIO:
        return self.fs.open(self._p(path), mode)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._p(path))

    def write_bytes(self, path: str, data: bytes) -> None:
        """One PUT: the object is the old one or all of the new."""
        self.fs.pipe_file(self._p(path), data)

    def makedirs(self, path: str) -> None:
        """Object stores have no directories; other fsspec filesystems may need them."""
        self.fs.makedirs(self._p(path), exist_ok=True)

    def remove(self, path: str) -> None:
        """Delete a file or a directory's objects, its manifest first: a crash part-way never leaves a
        step that lists objects it no longer has."""
        p = self._fresh(path)
        if not self.fs.isdir(p):
            self.fs.rm_file(p)
            return
        manifest = f"{p.rstrip('/')}/{MANIFEST_FILE}"
        if self.fs.exists(manifest):
            self.fs.rm_file(manifest)
        self.fs.rm(p, recursive=True)

    def move(self, src: str, dst: str) -> None:
        """Copy every object (the manifest last: the copy is a step only once complete), then delete the
        source (the manifest first)."""
        s, d = self._fresh(src).rstrip("/"), self._p(dst).rstrip("/")
        if not self.fs.isdir(s):
            self.fs.copy(s, d)
            self.fs.rm_file(s)
            return
        rels = sorted((f[len(s) + 1:] for f in self.fs.find(s)), key=lambda r: r == MANIFEST_FILE)
        for rel in rels:
            self.fs.copy(f"{s}/{rel}", f"{d}/{rel}")
        self.remove(src)

    def stage(self, final: str, replaced: Callable[[str], str]) -> str:
        """The step is written in place. Objects already there are the leftover of a crashed save (no
        manifest: removed) or a committed step being saved again (a resumed run: moved aside first)."""
        if self.isdir(final):
            if self.isfile(self.join(final, MANIFEST_FILE)):
                replaced(final)
            else:
                self.remove(final)
        self.makedirs(final)
        return final

    def check_staging(self, staging: str, final: str) -> None:
        if not self.same(staging, final):
            raise CheckpointError(staging, f"not the staging place of {final}")

    def publish(self, staging: str, final: str, replaced: Callable[[str], str]) -> None:
        """Nothing left to do: the manifest, written last into ``final``, committed the step."""

    def discard(self, staging: str) -> None:
        try:
            self.remove(staging)
        except (FileNotFoundError, OSError) as err:
            log.warning("Could not remove the unfinished save %s: %s", staging, err)

    def leftovers(self, root: str) -> list[str]:
        return []  # no temp names on an object store: an unfinished step is one without a manifest


Storage = LocalStorage | FsspecStorage


def storage_for(path: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> Storage:
    """The storage that ``path`` lives on: a URL (``s3://...``) through fsspec with ``options``
    (``runner.checkpoint.storage_options``; the store's own environment variables work too), else local.
    A missing fsspec protocol package raises ``StorageUnavailable`` naming the package to install."""
    path = os.fspath(path)
    if not is_url(path) or path.startswith("file://"):
        return LocalStorage()
    try:
        return FsspecStorage(path, options)
    except ImportError as err:
        raise StorageUnavailable(path, _install_hint(path, err)) from None
    except ValueError as err:  # fsspec: "Protocol not known"
        raise StorageUnavailable(path, f"no fsspec filesystem for this URL ({err})") from None


class StorageUnavailable(CheckpointError):
    """The filesystem of a checkpoint URL cannot be used here (its fsspec package is not installed)."""


_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "hf": "huggingface_hub", "hdfs": "pyarrow", "sftp": "paramiko"}


def _install_hint(url: str, err: ImportError) -> str:
    protocol = url.split("://", 1)[0]
    package = _PACKAGES.get(protocol)
    extra = " (or pip install -e '.[s3]')" if package == "s3fs" else ""
    what = f"pip install {package}{extra}" if package else f"install the fsspec package for {protocol}://"
    return f"{protocol}:// needs a package that is not installed: {what} ({err})"
