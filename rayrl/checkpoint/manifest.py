"""The manifest: the last file written into a step directory, listing every file with size and CRC32.

A step directory without a valid manifest is incomplete by definition. Verification checks every
listed file exists with the recorded size (cheap) and, optionally, the recorded CRC32 (reads it all).
Files on disk that the manifest does not list only cause a warning: the manifest proves that everything
the writers produced is present and intact, and a file added later (a note, an export made with
``dcp_to_torch_save``) does not make the checkpoint unloadable.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid
from rayrl.checkpoint.safe_io import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 8 << 20
_HASH_THREADS = 4  # zlib.crc32 and file reads release the GIL, so threads overlap IO and hashing

Digest = dict[str, Any]  # {"size": int, "crc32": "8 hex digits"}


def file_digest(path: str | os.PathLike[str]) -> Digest:
    """Size and CRC32 of a file, streamed through one reused buffer (fresh memory is slow here)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    crc = size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return {"size": size, "crc32": f"{crc:08x}"}


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
        if size != reused[rel]["size"]:
            raise CheckpointError(
                root / rel, f"size changed after its writer hashed it (reported {reused[rel]['size']}, disk {size})"
            )
        files[rel] = {"size": int(size), "crc32": str(reused[rel]["crc32"])}
    files.update(_digest_many(root, [r for r in rels if r not in reused]))
    files = dict(sorted(files.items()))
    return {"files": files, "total_bytes": sum(d["size"] for d in files.values())}


def write_manifest(
    root_dir: str | os.PathLike[str], manifest: Mapping[str, Any], step: int, extra: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write ``manifest.json``: the last act of a save, marking the directory complete."""
    doc = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_bytes": int(manifest["total_bytes"]),
        "files": dict(manifest["files"]),
        "extra": dict(extra or {}),
    }
    path = Path(root_dir) / MANIFEST_FILE
    atomic_write_json(path, doc)
    return path


def _check_schema(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for key, typ in (("format_version", int), ("step", int), ("files", dict), ("total_bytes", int)):
        if not isinstance(doc.get(key), typ):
            raise ValueError(f"{key!r} missing or not {typ.__name__}")
    for rel, d in doc["files"].items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or rel != p.as_posix():
            raise ValueError(f"unsafe path {rel!r}")
        if not (isinstance(d, dict) and isinstance(d.get("size"), int) and isinstance(d.get("crc32"), str)):
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
    if doc["format_version"] > FORMAT_VERSION:
        raise CheckpointInvalid(
            root, f"manifest format version {doc['format_version']} is newer than supported ({FORMAT_VERSION})"
        )
    return doc


def verify_checkpoint(
    step_dir: str | os.PathLike[str], check_checksums: bool = True, expected_step: int | None = None
) -> dict[str, Any]:
    """Raise ``CheckpointInvalid`` unless every file the manifest lists is on disk and intact.

    Returns the manifest. Sizes are checked for all files before any checksum, so a truncated shard
    is reported without reading gigabytes first.
    """
    root = Path(step_dir)
    doc = read_manifest(root)
    if expected_step is not None and doc["step"] != expected_step:
        raise CheckpointInvalid(root, f"manifest is for step {doc['step']}, directory is for step {expected_step}")
    files: dict[str, Digest] = doc["files"]
    for rel, want in files.items():
        path = root / rel
        if not path.is_file():
            raise CheckpointInvalid(root, f"missing file {rel}")
        size = path.stat().st_size
        if size != want["size"]:
            raise CheckpointInvalid(root, f"size mismatch for {rel} (manifest {want['size']} bytes, disk {size})")
    if check_checksums:
        got = _digest_many(root, list(files))
        for rel, want in files.items():
            if got[rel]["crc32"] != want["crc32"].lower():
                raise CheckpointInvalid(root, f"checksum mismatch for {rel}")
    extra = sorted(set(_list_files(root)) - set(files))
    if extra:
        log.warning("Checkpoint %s has files its manifest does not list (ignored): %s", root, ", ".join(extra))
    return doc
