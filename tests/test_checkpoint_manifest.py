"""Manifest digests, building, writing and verification, on real files."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import pytest

from rayrl.checkpoint import (
    MANIFEST_FILE,
    TEMP_PREFIX,
    CheckpointError,
    CheckpointInvalid,
    build_manifest,
    file_digest,
    verify_checkpoint,
    write_manifest,
)

FILES = {
    "actor/.metadata": b"meta",
    "actor/__0_0.distcp": b"a" * 1000,
    "actor/__1_0.distcp": b"b" * 1500,
    "data/data.pt": b"dataloader",
    "trainer_state.json": b"{}",
}


def _populate(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _complete(root: Path, step: int = 5) -> Path:
    _populate(root)
    write_manifest(root, build_manifest(root), step=step, extra={"world_size": 2})
    return root


def test_file_digest_streams_across_chunks(tmp_path):
    data = bytes(range(256)) * ((8 << 20) // 256) + b"xyz"  # 8 MiB + 3: crosses a chunk boundary
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "f") == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert file_digest(tmp_path / "empty") == {"size": 0, "crc32": "00000000"}


def test_build_manifest_lists_every_file_but_itself(tmp_path):
    _populate(tmp_path, {**FILES, MANIFEST_FILE: b"old", "sub/manifest.json": b"nested"})
    m = build_manifest(tmp_path)
    assert sorted(m["files"]) == sorted([*FILES, "sub/manifest.json"])
    assert m["files"]["actor/.metadata"] == {"size": 4, "crc32": f"{zlib.crc32(b'meta'):08x}"}
    assert m["total_bytes"] == sum(len(v) for v in FILES.values()) + len(b"nested")


def test_build_manifest_reuses_writer_digests(tmp_path):
    _populate(tmp_path)
    reported = {"size": 1000, "crc32": "deadbeef"}  # deliberately not the real CRC: proves reuse
    m = build_manifest(tmp_path, known={"./actor/__0_0.distcp": reported})
    assert m["files"]["actor/__0_0.distcp"] == reported
    assert m["files"]["actor/__1_0.distcp"] == file_digest(tmp_path / "actor/__1_0.distcp")


def test_build_manifest_rejects_stale_or_phantom_writer_digests(tmp_path):
    _populate(tmp_path)
    with pytest.raises(CheckpointError, match=r"size changed .*reported 999, disk 1000"):
        build_manifest(tmp_path, known={"actor/__0_0.distcp": {"size": 999, "crc32": "0"}})
    with pytest.raises(CheckpointError, match="file is missing") as info:
        build_manifest(tmp_path, known={"actor/__2_0.distcp": {"size": 1, "crc32": "0"}})
    assert info.value.path.endswith("actor/__2_0.distcp")


def test_write_and_verify(tmp_path):
    _complete(tmp_path, step=5)
    doc = verify_checkpoint(tmp_path, expected_step=5)
    assert (doc["format_version"], doc["step"], doc["extra"]) == (1, 5, {"world_size": 2})
    assert doc["total_bytes"] == sum(len(v) for v in FILES.values())
    assert doc["created"].endswith("+00:00")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _reason(path: Path, **kw) -> str:
    with pytest.raises(CheckpointInvalid) as info:
        verify_checkpoint(path, **kw)
    return info.value.reason


def test_verify_reasons_for_missing_and_incomplete(tmp_path):
    assert _reason(tmp_path / "nope") == "does not exist"
    _populate(tmp_path)
    assert _reason(tmp_path) == "no manifest.json (incomplete checkpoint)"
    (tmp_path / MANIFEST_FILE).write_text('{"format_version": 1, "st')
    assert _reason(tmp_path).startswith("manifest unreadable")


def _edit_manifest(root: Path, edit) -> None:
    doc = json.loads((root / MANIFEST_FILE).read_text())
    edit(doc)
    (root / MANIFEST_FILE).write_text(json.dumps(doc))


def test_verify_rejects_bad_manifests(tmp_path):
    _complete(tmp_path)
    _edit_manifest(tmp_path, lambda d: d["files"].update({"../escape": {"size": 1, "crc32": "0"}}))
    assert "unsafe path '../escape'" in _reason(tmp_path)
    _complete(tmp_path)
    _edit_manifest(tmp_path, lambda d: d.update(format_version=99))
    assert "format version 99 is newer" in _reason(tmp_path)
    _complete(tmp_path, step=5)
    assert _reason(tmp_path, expected_step=6) == "manifest is for step 5, directory is for step 6"


def test_verify_missing_shard(tmp_path):
    _complete(tmp_path)
    (tmp_path / "actor/__1_0.distcp").unlink()
    assert _reason(tmp_path) == "missing file actor/__1_0.distcp"


def test_verify_truncated_shard(tmp_path):
    _complete(tmp_path)
    (tmp_path / "actor/__1_0.distcp").write_bytes(b"b" * 700)
    assert _reason(tmp_path, check_checksums=False) == (
        "size mismatch for actor/__1_0.distcp (manifest 1500 bytes, disk 700)"
    )


def test_verify_flipped_byte_same_size(tmp_path):
    _complete(tmp_path)
    (tmp_path / "actor/__0_0.distcp").write_bytes(b"a" * 999 + b"X")
    assert _reason(tmp_path) == "checksum mismatch for actor/__0_0.distcp"
    verify_checkpoint(tmp_path, check_checksums=False)  # sizes alone cannot see it


def test_verify_extra_file_only_warns(tmp_path, caplog):
    _complete(tmp_path)
    (tmp_path / "actor/model.pt").write_bytes(b"export")
    with caplog.at_level(logging.WARNING, logger="rayrl.checkpoint.manifest"):
        verify_checkpoint(tmp_path)
    assert "actor/model.pt" in caplog.text


def test_failed_write_manifest_leaves_checkpoint_incomplete_and_clean(tmp_path):
    _populate(tmp_path)
    (tmp_path / MANIFEST_FILE).mkdir()  # the final os.replace fails with a real OSError
    with pytest.raises(OSError):
        write_manifest(tmp_path, build_manifest(tmp_path), step=1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert _reason(tmp_path) == "no manifest.json (incomplete checkpoint)"
