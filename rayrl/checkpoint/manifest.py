"""The manifest: the last file written into a step directory, listing every file with size and CRC32.

A step directory without a valid manifest is incomplete by definition. Verification checks every
listed file exists with the recorded size (cheap) and, optionally, the recorded CRC32 (reads it all).
DCP's data files (``*.distcp``) are the bulk of a step: the ranks that load them check their CRC32 as
they read them (``rayrl.checkpoint.dcp_io``), so resuming can leave them out here and read them once.

The CRC32 is zlib's (the same numbers as ``zlib.crc32``), computed by ISA-L, which runs several times
faster than zlib on CPUs with carry-less multiplication: manifests written with either verify with either.
Files on disk that the manifest does not list only cause a warning: the manifest proves that everything
the writers produced is present and intact, and a file added later (a note, an export made with
``dcp_to_torch_save``) does not make the checkpoint unloadable.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from isal.isal_zlib import crc32

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid
from rayrl.checkpoint.format import (
    D_CRC32,
    D_SIZE,
    DCP_SHARD_SUFFIX,
    M_CREATED,
    M_EXTRA,
    M_FILES,
    M_FORMAT_VERSION,
    M_STEP,
    M_TOTAL_BYTES,
    MANIFEST_FILE,
    MANIFEST_VERSION,
)
from rayrl.checkpoint.storage import Storage, storage_for

log = logging.getLogger(__name__)

_CHUNK = 8 << 20
_HASH_THREADS = 4  # the CRC and file reads release the GIL, so threads overlap IO and hashing

Digest = dict[str, Any]  # {"size": int, "crc32": "8 hex digits"}


class RunningDigest:
    """Size and CRC32 of bytes seen in order: a file's digest while it is written or read."""

    def __init__(self) -> None:
        self.size = self._crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self._crc = crc32(data, self._crc)
        self.size += len(data)

    def digest(self) -> Digest:
        return {D_SIZE: self.size, D_CRC32: f"{self._crc:08x}"}


def file_digest(path: str | os.PathLike[str], storage: Storage | None = None) -> Digest:
    """Size and CRC32 of a file, streamed through one reused buffer (no allocation per chunk)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    running = RunningDigest()
    opened = open(path, "rb", buffering=0) if storage is None else storage.open(path, "rb")
    with opened as f:
        while n := f.readinto(buf):
            running.update(view[:n])
    return running.digest()


def same_digest(got: Digest, want: Digest) -> bool:
    return got[D_SIZE] == want[D_SIZE] and got[D_CRC32] == want[D_CRC32].lower()


def _digest_many(storage: Storage, root: Path | str, rels: list[str]) -> dict[str, Digest]:
    if not rels:
        return {}
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(rels))) as pool:
        return dict(zip(rels, pool.map(lambda rel: file_digest(storage.join(root, rel), storage), rels)))


def _list_files(storage: Storage, root: Path | str) -> list[str]:
    """Relative POSIX paths of every file under ``root`` but the manifest (hidden ones too, e.g. DCP's .metadata)."""
    return [rel for rel in storage.list_files(root) if rel != MANIFEST_FILE]


def digest_tree(root_dir: str | os.PathLike[str], storage: Storage | None = None) -> dict[str, Digest]:
    """Digests of every file under ``root_dir`` by relative POSIX path (what a writer reports of its part)."""
    storage = storage or storage_for(root_dir)
    root = storage.join(root_dir)
    return _digest_many(storage, root, _list_files(storage, root))


def build_manifest(root_dir: str | os.PathLike[str], known: Mapping[str, Digest] | None = None,
                   storage: Storage | None = None) -> dict[str, Any]:
    """Digest every file under ``root_dir``, reusing digests that writers computed of their own files.

    A reused digest must name an existing file of the same size: anything else means a file changed
    or vanished after its writer hashed it, and the save fails rather than bless it.
    """
    storage = storage or storage_for(root_dir)
    root = storage.join(root_dir)
    rels = _list_files(storage, root)
    reused = {PurePosixPath(k).as_posix(): v for k, v in (known or {}).items()}
    missing = sorted(set(reused) - set(rels))
    if missing:
        raise CheckpointError(storage.join(root, missing[0]), "a writer reported a digest for it, but the file is missing")
    files: dict[str, Digest] = {}
    for rel in set(reused) & set(rels):
        size = storage.size(storage.join(root, rel))
        if size != reused[rel][D_SIZE]:
            raise CheckpointError(
                storage.join(root, rel), f"size changed after its writer hashed it (reported {reused[rel][D_SIZE]}, disk {size})"
            )
        files[rel] = {D_SIZE: int(size), D_CRC32: str(reused[rel][D_CRC32])}
    files.update(_digest_many(storage, root, [r for r in rels if r not in reused]))
    files = dict(sorted(files.items()))
    return {M_FILES: files, M_TOTAL_BYTES: sum(d[D_SIZE] for d in files.values())}


def write_manifest(
    root_dir: str | os.PathLike[str], manifest: Mapping[str, Any], step: int, extra: Mapping[str, Any] | None = None,
    storage: Storage | None = None,
) -> Path | str:
    """Write ``manifest.json`` whole (atomically): the last act of a save, marking the directory complete
    (on an object store, committing it)."""
    doc = {
        M_FORMAT_VERSION: MANIFEST_VERSION,
        M_STEP: int(step),
        M_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        M_TOTAL_BYTES: int(manifest[M_TOTAL_BYTES]),
        M_FILES: dict(manifest[M_FILES]),
        M_EXTRA: dict(extra or {}),
    }
    storage = storage or storage_for(root_dir)
    path = storage.join(root_dir, MANIFEST_FILE)
    storage.write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def _check_schema(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for key, typ in ((M_FORMAT_VERSION, int), (M_STEP, int), (M_FILES, dict), (M_TOTAL_BYTES, int)):
        if not isinstance(doc.get(key), typ):
            raise ValueError(f"{key!r} missing or not {typ.__name__}")
    for rel, d in doc[M_FILES].items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or rel != p.as_posix():
            raise ValueError(f"unsafe path {rel!r}")
        if not (isinstance(d, dict) and isinstance(d.get(D_SIZE), int) and isinstance(d.get(D_CRC32), str)):
            raise ValueError(f"bad entry for {rel!r}")


def read_manifest(step_dir: str | os.PathLike[str], storage: Storage | None = None) -> dict[str, Any]:
    """The parsed manifest of a step directory, or ``CheckpointInvalid`` saying why there is none."""
    storage = storage or storage_for(step_dir)
    root = storage.join(step_dir)
    path = storage.join(root, MANIFEST_FILE)
    try:  # an OSError reading it (EIO, ESTALE, a timeout) propagates: storage trouble is not damage
        text = storage.read_bytes(path).decode("utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if not storage.isdir(root):
            raise CheckpointInvalid(root, "does not exist" if not storage.exists(root) else "not a directory") from None
        raise CheckpointInvalid(root, f"no {MANIFEST_FILE} (incomplete checkpoint)") from None
    except UnicodeDecodeError as e:
        raise CheckpointInvalid(root, f"manifest unreadable: {e}") from e
    try:
        doc = json.loads(text)
        _check_schema(doc)
    except ValueError as e:
        raise CheckpointInvalid(root, f"manifest unreadable: {e}") from e
    if doc[M_FORMAT_VERSION] > MANIFEST_VERSION:
        raise CheckpointInvalid(
            root, f"manifest format version {doc[M_FORMAT_VERSION]} is newer than supported ({MANIFEST_VERSION})"
        )
    return doc


def verify_checkpoint(
    step_dir: str | os.PathLike[str], check_checksums: bool = True, expected_step: int | None = None,
    checked_on_load: Callable[[str], bool] | None = None, storage: Storage | None = None,
) -> dict[str, Any]:
    """Raise ``CheckpointInvalid`` unless every file the manifest lists is there and intact.

    Returns the manifest. Sizes are checked for all files before any checksum, so a truncated shard
    is reported without reading gigabytes first. Checksums are not read here for the files
    ``checked_on_load`` names (their loader checks them as it reads them).
    """
    storage = storage or storage_for(step_dir)
    root = storage.join(step_dir)
    doc = read_manifest(root, storage)
    if expected_step is not None and doc[M_STEP] != expected_step:
        raise CheckpointInvalid(root, f"manifest is for step {doc[M_STEP]}, directory is for step {expected_step}")
    files: dict[str, Digest] = doc[M_FILES]
    present = set(_list_files(storage, root))
    for rel, want in files.items():
        path = storage.join(root, rel)
        if rel not in present:
            raise CheckpointInvalid(root, f"missing file {rel}")
        size = storage.size(path)
        if size != want[D_SIZE]:
            raise CheckpointInvalid(root, f"size mismatch for {rel} (manifest {want[D_SIZE]} bytes, disk {size})")
    if check_checksums:
        rels = [rel for rel in files if checked_on_load is None or not checked_on_load(rel)]
        got = _digest_many(storage, root, rels)
        for rel in rels:
            if not same_digest(got[rel], files[rel]):
                raise CheckpointInvalid(root, f"checksum mismatch for {rel}")
    extra = sorted(present - set(files))
    if extra:
        log.warning("Checkpoint %s has files its manifest does not list (ignored): %s", root, ", ".join(extra))
    return doc


def is_dcp_data(rel: str) -> bool:
    """Whether a manifest entry is a DCP data file (checked by the ranks as they load it)."""
    return rel.endswith(DCP_SHARD_SUFFIX)


def part_digests(part_dir: str | os.PathLike[str], storage: Storage | None = None) -> dict[str, Digest] | None:
    """The manifest's digests of the files under a participant's directory (``<step>/<name>/``), keyed
    by their path relative to it; None when its parent is no committed step (no manifest there)."""
    storage = storage or storage_for(part_dir)
    part = storage.join(part_dir)
    step = storage.parent(part)
    if not storage.isfile(storage.join(step, MANIFEST_FILE)):
        return None
    prefix = f"{storage.name(part)}/"
    files = read_manifest(step, storage)["files"]
    return {rel[len(prefix):]: d for rel, d in files.items() if rel.startswith(prefix)}
