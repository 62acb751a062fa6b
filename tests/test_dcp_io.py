"""DCP files are checksummed as they are written and checked as they are read, on real files, in-process
(DCP without a process group): the writer's digests are the files' own, a load that reads a file whole
catches a changed byte without the discovery step reading it, and so does a load that reads it in part."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch

from rayrl.checkpoint import CheckpointInvalid, build_manifest, file_digest, verify_checkpoint, write_manifest
from rayrl.checkpoint.manager import TRAINER_STATE_FILE, DefaultCheckpointManager
from rayrl.checkpoint.manifest import is_dcp_data
from rayrl.checkpoint.sharded import ShardedCheckpointIO
from rayrl.config import CheckpointConfig


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(1024, 1024, generator=g), "b": torch.randn(64, generator=g)},
            "optimizer": {"m": torch.randn(300, 50, generator=g), "step": torch.tensor(3.0)}}


def _zeros_like(state: dict) -> dict:
    return {k: _zeros_like(v) if isinstance(v, dict) else torch.zeros_like(v) for k, v in state.items()}


def _committed_step(root: Path, thread_count: int = 1) -> tuple[Path, dict]:
    """``root/global_step_1`` as a run leaves it: the DCP files under ``actor/``, the manifest (with the
    writer's digests) last."""
    step, state = root / "global_step_1", _state()
    io = ShardedCheckpointIO(0, None, thread_count=thread_count)
    io.save(str(step / "actor"), state, async_save=False)
    digests = io.wait()
    (step / TRAINER_STATE_FILE).write_text('{"global_step": 1}')
    write_manifest(step, build_manifest(step, known={f"actor/{k}": v for k, v in digests.items()}), step=1)
    return step, digests


def _flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_writer_digests_are_those_of_the_files_written(tmp_path):
    """Every file DCP wrote (shards of several writer threads, and .metadata, renamed into place)."""
    step, digests = _committed_step(tmp_path, thread_count=2)
    on_disk = sorted(p.name for p in (step / "actor").iterdir())
    assert sorted(digests) == on_disk and len([n for n in on_disk if n.endswith(".distcp")]) == 2
    for name, digest in digests.items():
        data = (step / "actor" / name).read_bytes()
        assert digest == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}  # zlib's CRC32 numbers


@pytest.mark.parametrize("threads, damaged", [(1, "__0_0.distcp"), (2, "__0_1.distcp")])
def test_load_checks_each_file_as_it_reads_it(tmp_path, threads, damaged):
    """One file per rank, or one per writer thread (``thread_count``): damage in any of them is found."""
    step, _ = _committed_step(tmp_path, thread_count=threads)
    back = _zeros_like(_state())
    ShardedCheckpointIO(0, None, thread_count=threads).load(str(step / "actor"), back)
    torch.testing.assert_close(back, _state())

    _flip_byte(step / "actor" / damaged)
    verify_checkpoint(step, checked_on_load=is_dcp_data)  # discovery leaves the shard's checksum to the load
    with pytest.raises(CheckpointInvalid, match=rf"checksum mismatch for actor/{damaged.replace('.', '[.]')}"):
        ShardedCheckpointIO(0, None, thread_count=threads).load(str(step / "actor"), _zeros_like(_state()))
    ShardedCheckpointIO(0, None).load(str(step / "actor"), _zeros_like(_state()), verify=False)  # when asked


@pytest.mark.parametrize("where", [0.0, 0.99])
def test_damage_that_breaks_the_file_format_is_named_as_damage(tmp_path, where):
    """A changed byte in an item's zip header makes torch.load fail before the file's end is reached."""
    step, _ = _committed_step(tmp_path)
    _flip_byte(step / "actor" / "__0_0.distcp", where)
    with pytest.raises(CheckpointInvalid, match=r"checksum mismatch for actor/__0_0\.distcp"):
        ShardedCheckpointIO(0, None).load(str(step / "actor"), _zeros_like(_state()))


def test_a_file_read_in_part_is_still_checked_whole(tmp_path):
    """Loading only the model reads part of the shard (as a rank of another world size does): the damage
    in the part it skips is still found, by the rank the file is assigned to."""
    step, _ = _committed_step(tmp_path)
    data = (step / "actor" / "__0_0.distcp").read_bytes()
    (step / "actor" / "__0_0.distcp").write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    with pytest.raises(CheckpointInvalid, match=r"checksum mismatch for actor/__0_0\.distcp"):
        ShardedCheckpointIO(0, None).load(str(step / "actor"), {"model": _zeros_like(_state())["model"]})
    assert file_digest(step / "actor" / "__0_0.distcp")["size"] == len(data)


class _ActorPart:
    """The actor's share of a step as one rank loads it (what ``ActorWorker.load_checkpoint`` does)."""

    name = "actor"

    def load(self, directory: str) -> None:
        ShardedCheckpointIO(0, None).load(directory, _zeros_like(_state()))


def _bytes_read() -> int:
    """Bytes this process has read through read calls so far (page-cache hits included)."""
    line = next(ln for ln in Path("/proc/self/io").read_text().splitlines() if ln.startswith("rchar:"))
    return int(line.split()[1])


def test_a_resume_reads_each_shard_once(tmp_path):
    """Finding the step to resume (with checksums on) and loading it read the DCP shards once in all."""
    step, _ = _committed_step(tmp_path)
    shards = sum(p.stat().st_size for p in (step / "actor").glob("*.distcp"))
    manager = DefaultCheckpointManager(CheckpointConfig(), str(tmp_path))
    for _ in range(2):  # the second time: without the reads of modules the first one imports
        before = _bytes_read()
        start = manager.prepare(None, "auto", restarted=False)
        assert start == str(step)
        assert manager.load(start, [_ActorPart()]) == {"global_step": 1}
    assert shards <= _bytes_read() - before < 1.5 * shards
