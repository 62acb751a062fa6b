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
from rayrl.checkpoint.safe_io import atomic_write_json

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


def file_digest(path: str | os.PathLike[str]) -> Digest:
    """Size and CRC32 of a file, streamed through one reused buffer (no allocation per chunk)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    running = RunningDigest()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            running.update(view[:n])
    return running.digest()


def same_digest(got: Digest, want: Digest) -> bool:
    return got[D_SIZE] == want[D_SIZE] and got[D_CRC32] == want[D_CRC32].lower()


def _digest_many(root: Path, rels: list[str]) -> dict[str, Digest]:
    if not rels:
        return {}
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(rels))) as pool:
        return dict(zip(rels, pool.map(lambda rel: file_digest(root / rel), rels)))


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under ``root`` (hidden ones too, e.g. DCP's .metadata)."""
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel != MANIFEST_FILE:
                rels.append(rel)
    return sorted(rels)


def digest_tree(root_dir: str | os.PathLike[str]) -> dict[str, Digest]:
    """Digests of every file under ``root_dir`` by relative POSIX path (what a writer reports of its part)."""
    root = Path(root_dir)
    return _digest_many(root, _list_files(root))


def build_manifest(root_dir: str | os.PathLike[str], known: Mapping[str, Digest] | None = None) -> dict[str, Any]:
    """Digest every file under ``root_dir``, reusing digests that writers computed of their own files.

    A reused digest must name an existing file of the same size: anything else means a file changed
    or vanished after its writer hashed it, and the save fails rather than bless it.
    """
    root = Path(root_dir)
    rels = _list_files(root)
    reused = {PurePosixPath(k).as_posix(): v for k, v in (known or {}).items()}
    missing = sorted(set(reused) - set(rels))
    if missing:
        raise CheckpointError(root / missing[0], "a writer reported a digest for it, but the file is missing")
    files: dict[str, Digest] = {}
    for rel in set(reused) & set(rels):
        size = (root / rel).stat().st_size
        if size != reused[rel][D_SIZE]:
            raise CheckpointError(
                root / rel, f"size changed after its writer hashed it (reported {reused[rel][D_SIZE]}, disk {size})"
            )
        files[rel] = {D_SIZE: int(size), D_CRC32: str(reused[rel][D_CRC32])}
    files.update(_digest_many(root, [r for r in rels if r not in reused]))
    files = dict(sorted(files.items()))
    return {M_FILES: files, M_TOTAL_BYTES: sum(d[D_SIZE] for d in files.values())}


def write_manifest(
    root_dir: str | os.PathLike[str], manifest: Mapping[str, Any], step: int, extra: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write ``manifest.json``: the last act of a save, marking the directory complete."""
    doc = {
        M_FORMAT_VERSION: MANIFEST_VERSION,
        M_STEP: int(step),
        M_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        M_TOTAL_BYTES: int(manifest[M_TOTAL_BYTES]),
        M_FILES: dict(manifest[M_FILES]),
        M_EXTRA: dict(extra or {}),
    }
    path = Path(root_dir) / MANIFEST_FILE
    atomic_write_json(path, doc)
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


def read_manifest(step_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest of a step directory, or ``CheckpointInvalid`` saying why there is none."""
    root = Path(step_dir)
    if not root.is_dir():
        raise CheckpointInvalid(root, "does not exist" if not root.exists() else "not a directory")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointInvalid(root, f"no {MANIFEST_FILE} (incomplete checkpoint)")
    try:  # an OSError reading it (EIO, ESTALE, a timeout) propagates: storage trouble is not damage
        doc = json.loads(path.read_text(encoding="utf-8"))
        _check_schema(doc)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointInvalid(root, f"manifest unreadable: {e}") from e
    if doc[M_FORMAT_VERSION] > MANIFEST_VERSION:
        raise CheckpointInvalid(
            root, f"manifest format version {doc[M_FORMAT_VERSION]} is newer than supported ({MANIFEST_VERSION})"
        )
    return doc


def verify_checkpoint(
    step_dir: str | os.PathLike[str], check_checksums: bool = True, expected_step: int | None = None,
    checked_on_load: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Raise ``CheckpointInvalid`` unless every file the manifest lists is on disk and intact.

    Returns the manifest. Sizes are checked for all files before any checksum, so a truncated shard
    is reported without reading gigabytes first. Checksums are not read here for the files
    ``checked_on_load`` names (their loader checks them as it reads them).
    """
    root = Path(step_dir)
    doc = read_manifest(root)
    if expected_step is not None and doc[M_STEP] != expected_step:
        raise CheckpointInvalid(root, f"manifest is for step {doc[M_STEP]}, directory is for step {expected_step}")
    files: dict[str, Digest] = doc[M_FILES]
    for rel, want in files.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointInvalid(root, f"missing file {rel}")
        size = path.stat().st_size
        if size != want[D_SIZE]:
            raise CheckpointInvalid(root, f"size mismatch for {rel} (manifest {want[D_SIZE]} bytes, disk {size})")
    if check_checksums:
        rels = [rel for rel in files if checked_on_load is None or not checked_on_load(rel)]
        got = _digest_many(root, rels)
        for rel in rels:
            if not same_digest(got[rel], files[rel]):
                raise CheckpointInvalid(root, f"checksum mismatch for {rel}")
    extra = sorted(set(_list_files(root)) - set(files))
    if extra:
        log.warning("Checkpoint %s has files its manifest does not list (ignored): %s", root, ", ".join(extra))
    return doc


def is_dcp_data(rel: str) -> bool:
    """Whether a manifest entry is a DCP data file (checked by the ranks as they load it)."""
    return rel.endswith(DCP_SHARD_SUFFIX)


def part_digests(part_dir: str | os.PathLike[str]) -> dict[str, Digest] | None:
    """The manifest's digests of the files under a participant's directory (``<step>/<name>/``), keyed
    by their path relative to it; None when its parent is no committed step (no manifest there)."""
    part = Path(part_dir).resolve()
    if not (part.parent / MANIFEST_FILE).is_file():
        return None
    prefix = f"{part.name}/"
    files = read_manifest(part.parent)["files"]
    return {rel[len(prefix):]: d for rel, d in files.items() if rel.startswith(prefix)}
