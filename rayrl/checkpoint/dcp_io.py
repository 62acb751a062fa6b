"""DCP's file writer and reader, checksumming every file as it passes instead of reading it again.

Saving: ``DigestingWriter`` is DCP's ``FileSystemWriter`` whose streams feed each byte written to a CRC32,
so a rank knows the digests of its files (for the manifest) the moment DCP has written them. Without it
every shard was read back once more for its CRC32, which cost as much as writing it.

Loading: ``VerifyingReader`` is DCP's ``FileSystemReader`` that reads each file in offset order, hashes
every byte as it goes and, when it has read the whole file, compares the digest with the manifest's: a
resume reads the checkpoint once, and a damaged file stops the load with ``CheckpointInvalid``. A file
this rank reads only in part (resharding to another world size) is not checked here; ``unchecked`` lists
those, for the caller to check whole.

Both wrap DCP's stream seams (``fs.create_stream`` and ``_slice_file``) and nothing else of its logic, on
DCP's local filesystem or on its fsspec one (``FsspecWriter``/``FsspecReader``: S3, GCS, ...), whichever
the checkpoint's storage is: ``dcp_writer`` and ``dcp_reader`` pick it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem as FsspecFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.filesystem import FileSystem

from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.checkpoint.manifest import Digest, RunningDigest, same_digest
from rayrl.checkpoint.storage import Storage


class _HashingWriteStream:
    """A write-only file that digests what passes through it (DCP only appends: it never seeks)."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw
        self.digest = RunningDigest()

    def write(self, data: Any) -> int:
        n = self.raw.write(data)
        self.digest.update(memoryview(data).cast("B")[:n])
        return n

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()


class _Digesting:
    """Records the digest of every file written, by name; a rename (DCP's ``.metadata``) carries it along.
    Mixed into DCP's local or fsspec ``FileSystem``."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[str, Digest] = {}
        self._lock = threading.Lock()  # DCP writes files from several threads with thread_count > 1

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        if "r" in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with super().create_stream(path, mode) as raw:
            stream = _HashingWriteStream(raw)
            yield stream
        with self._lock:
            self.digests[Path(path).name] = stream.digest.digest()

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        super().rename(path, new_path)
        with self._lock:
            if Path(path).name in self.digests:
                self.digests[Path(new_path).name] = self.digests.pop(Path(path).name)


class _DigestingFileSystem(_Digesting, FileSystem):
    pass


class _DigestingFsspecFileSystem(_Digesting, FsspecFileSystem):
    pass


class DigestingWriter(FileSystemWriter):
    """``FileSystemWriter`` that knows the size and CRC32 of each file it wrote (``digests``, by name)."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.fs = _DigestingFileSystem()

    @property
    def digests(self) -> dict[str, Digest]:
        return dict(self.fs.digests)


class DigestingFsspecWriter(FsspecWriter):
    """``DigestingWriter`` on an fsspec filesystem: each object is uploaded and digested as DCP writes it."""

    def __init__(self, path: str, storage_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(path, **kwargs, **storage_options)
        self.fs = _DigestingFsspecFileSystem()
        self.path = self.fs.init_path(path, **storage_options)

    @property
    def digests(self) -> dict[str, Digest]:
        return dict(self.fs.digests)


def dcp_writer(storage: Storage, path: str, thread_count: int) -> DigestingWriter | DigestingFsspecWriter:
    """DCP's writer for ``path`` on ``storage``, digesting every file. Local files are fsynced; an object
    is durable once its upload has completed (DCP would call ``os.sync()`` for the whole machine instead)."""
    if storage.commits_by_rename:
        return DigestingWriter(path, single_file_per_rank=True, sync_files=True, thread_count=thread_count)
    return DigestingFsspecWriter(path, dict(storage.options), single_file_per_rank=True, sync_files=False,
                                 thread_count=thread_count)


def dcp_reader(storage: Storage, path: str) -> FileSystemReader:
    """DCP's plain reader for ``path`` on ``storage`` (no checks: see ``VerifyingReader``)."""
    if storage.commits_by_rename:
        return FileSystemReader(path)
    return FsspecReader(path, **storage.options)


class _VerifyingReadStream:
    """A file read front to back whose bytes are digested; ``read_range`` serves DCP's items in order.
    A backward jump or a skipped gap (bytes this rank does not need) means no digest of the whole file."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self.digest = RunningDigest()
        self.whole = True  # every byte so far went through ``digest``, in order

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self._seen(data)
        return data

    def readline(self, limit: int = -1) -> bytes:  # pickle.load (DCP's .metadata) uses it
        data = self.raw.readline(limit)
        self._seen(data)
        return data

    def readinto(self, buf: Any) -> int:
        n = self.raw.readinto(buf)
        self._seen(memoryview(buf).cast("B")[:n])
        return n

    def _seen(self, data: bytes | memoryview) -> None:
        if self.whole:
            self.digest.update(data)

    def read_range(self, offset: int, length: int) -> bytes:
        pos = self.raw.tell()
        if offset != pos:
            self.whole = False
            self.raw.seek(offset)
        data = self.read(length)
        if len(data) != length:
            raise EOFError(f"item at offset {offset} of {length} bytes runs past the end of the file")
        return data

    def at_end(self) -> bool:
        return self.raw.read(1) == b""


class _Verifying:
    """Checks each expected file read whole; mixed into DCP's local or fsspec ``FileSystem``."""

    def __init__(self, expected: Mapping[str, Digest], step_dir: str, prefix: str) -> None:
        super().__init__()
        self.expected, self.step_dir, self.prefix = expected, step_dir, prefix
        self.checked: set[str] = set()

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[Any]:
        name = Path(path).name
        with super().create_stream(path, mode) as raw:
            if name not in self.expected:
                yield raw
                return
            stream = _VerifyingReadStream(raw)
            yield stream
            if stream.whole and stream.at_end():
                if not same_digest(stream.digest.digest(), self.expected[name]):
                    raise CheckpointInvalid(self.step_dir, f"checksum mismatch for {self.prefix}{name}")
                self.checked.add(name)


class _VerifyingFileSystem(_Verifying, FileSystem):
    pass


class _VerifyingFsspecFileSystem(_Verifying, FsspecFileSystem):
    pass


class VerifyingReader(FileSystemReader):
    """``FileSystemReader`` that checks each file it reads whole against ``expected`` (digests by name);
    ``step_dir`` and ``prefix`` (the files' directory within it) name a damaged file in the error. On an
    fsspec ``storage`` it reads through DCP's fsspec filesystem."""

    def __init__(self, path: str, expected: Mapping[str, Digest], step_dir: str, prefix: str,
                 storage: Storage | None = None) -> None:
        super().__init__(path)
        if storage is None or storage.commits_by_rename:
            self.fs = _VerifyingFileSystem(expected, step_dir, prefix)
        else:
            self.fs = _VerifyingFsspecFileSystem(expected, step_dir, prefix)
            self.path = self.fs.init_path(path, **storage.options)

    def prepare_local_plan(self, plan: Any) -> Any:
        """Read every file front to back: the items in file and offset order."""
        def where(item: Any) -> tuple[str, int]:
            info = self.storage_data[item.storage_index]
            return info.relative_path, info.offset
        return dataclasses.replace(plan, items=sorted(plan.items, key=where))

    def _slice_file(self, file: Any, sinfo: Any) -> io.BytesIO:
        if isinstance(file, _VerifyingReadStream):
            return io.BytesIO(file.read_range(sinfo.offset, sinfo.length))
        return super()._slice_file(file, sinfo)

    def unchecked(self) -> list[str]:
        """Names of the expected files this reader did not check (not read whole, or not at all)."""
        return sorted(set(self.fs.expected) - self.fs.checked)
