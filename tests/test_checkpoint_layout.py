"""The checkpoints/ directory: commit, tracker, resume discovery over every crash state, archive, clean-up."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from rayrl.checkpoint import (
    TEMP_PREFIX,
    TRACKER_FILE,
    CheckpointDir,
    CheckpointError,
    NoValidCheckpoint,
    build_manifest,
    parse_step,
    verify_checkpoint,
    write_manifest,
)

LOGGER = "rayrl.checkpoint.layout"


def _write_step_files(d: Path, step: int) -> None:
    for rel, data in {
        "actor/.metadata": b"meta",
        "actor/__0_0.distcp": f"rank0 step {step}".encode() * 50,
        "actor/__1_0.distcp": f"rank1 step {step}".encode() * 50,
        "data/data.pt": b"loader",
    }.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)


def _prepared(cdir: CheckpointDir, step: int) -> Path:
    """A temp dir holding a complete step, manifest included, not yet committed."""
    tmp = cdir.new_temp_dir(step)
    _write_step_files(tmp, step)
    write_manifest(tmp, build_manifest(tmp), step=step)
    return tmp


def _save(cdir: CheckpointDir, step: int) -> Path:
    return cdir.commit(_prepared(cdir, step), step)


def _names(cdir: CheckpointDir) -> list[str]:
    return sorted(p.name for p in cdir.root.iterdir())


def _aside(cdir: CheckpointDir, step: int, tag: str = "corrupt") -> list[Path]:
    pattern = re.compile(rf"global_step_{step}\.{tag}-\d{{8}}-\d{{6}}(-\d+)?")
    return sorted(p for p in cdir.root.iterdir() if pattern.fullmatch(p.name))


@pytest.fixture
def cdir(tmp_path) -> CheckpointDir:
    return CheckpointDir(tmp_path / "checkpoints")


def test_parse_step_accepts_only_exact_names():
    assert parse_step("global_step_0") == 0
    assert parse_step("global_step_120") == 120
    for name in ["global_step_05", "global_step_", "global_step_-1", "global_step_5.corrupt-20260101-000000",
                 "xglobal_step_5", ".tmp-global_step_5-1-ab", "global_step_5/", "run_0", "global_step_٣"]:
        assert parse_step(name) is None, name


def test_step_dir_and_listing(cdir):
    assert cdir.list_step_dirs() == []
    with pytest.raises(ValueError):
        cdir.step_dir(-1)
    for step in (100, 2, 10):
        cdir.step_dir(step).mkdir(parents=True)
    (cdir.root / "global_step_3").write_text("a file, not a step")
    for name in ("global_step_4.corrupt-20260101-000000", "run_0", ".tmp-global_step_7-1-ab"):
        (cdir.root / name).mkdir()
    assert cdir.list_step_dirs() == [(s, cdir.root / f"global_step_{s}") for s in (2, 10, 100)]


def test_commit_renames_into_place_then_writes_tracker(cdir):
    tmp = _prepared(cdir, 5)
    assert tmp.name.startswith(TEMP_PREFIX + "global_step_5-") and tmp.parent == cdir.root
    final = cdir.commit(tmp, 5)
    assert final == cdir.step_dir(5) and not tmp.exists()
    verify_checkpoint(final, expected_step=5)
    assert cdir.read_tracker() == 5
    assert (cdir.root / TRACKER_FILE).read_text() == "5\n"
    assert _names(cdir) == ["global_step_5", TRACKER_FILE]


def test_commit_refuses_incomplete_or_foreign_dirs(cdir, tmp_path):
    tmp = cdir.new_temp_dir(5)
    _write_step_files(tmp, 5)
    with pytest.raises(CheckpointError, match="write the manifest"):
        cdir.commit(tmp, 5)
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    with pytest.raises(CheckpointError, match="not a temp dir"):
        cdir.commit(foreign, 5)
    assert cdir.list_step_dirs() == [] and cdir.read_tracker() is None


def test_commit_of_an_existing_step_swaps_and_keeps_the_old_one(cdir):
    _save(cdir, 5)
    old_shard = (cdir.step_dir(5) / "actor/__0_0.distcp").read_bytes()
    tmp = cdir.new_temp_dir(5)
    _write_step_files(tmp, 5)
    (tmp / "actor/__0_0.distcp").write_bytes(b"new content")
    write_manifest(tmp, build_manifest(tmp), step=5)
    cdir.commit(tmp, 5)
    assert (cdir.step_dir(5) / "actor/__0_0.distcp").read_bytes() == b"new content"
    verify_checkpoint(cdir.step_dir(5))
    [old] = _aside(cdir, 5, "replaced")
    assert (old / "actor/__0_0.distcp").read_bytes() == old_shard
    verify_checkpoint(old)
    assert not [n for n in _names(cdir) if n.startswith(TEMP_PREFIX)]


def test_rename_exchange_is_atomic_here(tmp_path):
    # Linux ext4 supports it; commit falls back to two renames (with a gap) where it does not.
    from rayrl.checkpoint.storage import rename_exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("A")
    (tmp_path / "b").mkdir()
    assert rename_exchange(tmp_path / "a", tmp_path / "b") is True
    assert (tmp_path / "b" / "x").read_text() == "A" and not any((tmp_path / "a").iterdir())


def test_commit_failing_before_the_rename_changes_nothing_visible(cdir):
    _save(cdir, 5)
    tmp = _prepared(cdir, 10)
    (tmp / "actor/dangling").symlink_to(tmp / "no-such-file")  # fsync of the tree fails with a real OSError
    with pytest.raises(OSError):
        cdir.commit(tmp, 10)
    assert cdir.list_step_dirs() == [(5, cdir.step_dir(5))] and cdir.read_tracker() == 5
    assert cdir.cleanup_temp_dirs() == [tmp]


def test_commit_failing_at_the_tracker_leaves_a_complete_step(cdir):
    _save(cdir, 5)
    (cdir.root / TRACKER_FILE).unlink()
    (cdir.root / TRACKER_FILE).mkdir()  # replacing it fails with a real OSError
    with pytest.raises(OSError):
        _save(cdir, 10)
    verify_checkpoint(cdir.step_dir(10), expected_step=10)
    assert not [n for n in _names(cdir) if n.startswith(TEMP_PREFIX)]


# -- resume discovery over every state a crash can leave ---------------------------------------------


def test_no_checkpoints(cdir):
    assert cdir.find_resume_point() is None
    cdir.root.mkdir()
    assert cdir.find_resume_point() is None


def test_crash_before_rename_leaves_only_a_temp_dir(cdir):
    _save(cdir, 5)
    _save(cdir, 10)
    complete_tmp = _prepared(cdir, 15)  # manifest written, never renamed
    partial_tmp = cdir.new_temp_dir(20)
    (partial_tmp / "actor").mkdir()
    assert cdir.find_resume_point() == (10, cdir.step_dir(10))
    assert complete_tmp.exists() and partial_tmp.exists()  # not steps: untouched by discovery
    assert sorted(cdir.cleanup_temp_dirs()) == sorted([complete_tmp, partial_tmp])
    assert _names(cdir) == ["global_step_10", "global_step_5", TRACKER_FILE]


def test_crash_between_rename_and_tracker(cdir, caplog):
    _save(cdir, 5)
    os.rename(_prepared(cdir, 10), cdir.step_dir(10))
    assert cdir.read_tracker() == 5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cdir.find_resume_point() == (10, cdir.step_dir(10))
    assert cdir.read_tracker() == 10 and "tracker rewritten" in caplog.text


def test_tracker_naming_a_missing_step(cdir, caplog):
    _save(cdir, 5)
    cdir.write_tracker(7)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cdir.find_resume_point() == (5, cdir.step_dir(5))
    assert cdir.read_tracker() == 5 and "names step 7" in caplog.text


@pytest.mark.parametrize("content", ["", "abc", "-3", "3.5", "\u0663", "5 6"])
def test_garbage_tracker_is_ignored(cdir, caplog, content):
    _save(cdir, 5)
    (cdir.root / TRACKER_FILE).write_text(content)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cdir.read_tracker() is None
        assert cdir.find_resume_point() == (5, cdir.step_dir(5))
    assert "unexpected content" in caplog.text and cdir.read_tracker() == 5


def _damage_missing_manifest(d: Path) -> None:
    (d / "manifest.json").unlink()


def _damage_truncate(d: Path) -> None:
    with open(d / "actor/__1_0.distcp", "r+b") as f:
        f.truncate(10)


def _damage_flip_byte(d: Path) -> None:
    data = bytearray((d / "actor/__1_0.distcp").read_bytes())
    data[7] ^= 0xFF
    (d / "actor/__1_0.distcp").write_bytes(data)


def _damage_wrong_step(d: Path) -> None:  # e.g. a step copied under another name by hand
    shutil.rmtree(d)
    shutil.copytree(d.parent / "global_step_5", d)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_damage_missing_manifest, "no manifest.json (incomplete checkpoint)"),
        (_damage_truncate, "size mismatch for actor/__1_0.distcp"),
        (_damage_flip_byte, "checksum mismatch for actor/__1_0.distcp"),
        (_damage_wrong_step, "manifest is for step 5, directory is for step 10"),
    ],
)
def test_invalid_newest_step_is_moved_aside(cdir, caplog, damage, reason):
    _save(cdir, 5)
    _save(cdir, 10)
    damage(cdir.step_dir(10))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cdir.find_resume_point() == (5, cdir.step_dir(5))
    [aside] = _aside(cdir, 10)
    assert not cdir.step_dir(10).exists() and (aside / "actor/.metadata").exists()  # moved, not deleted
    assert reason in caplog.text and aside.name in caplog.text
    assert cdir.read_tracker() == 5


def test_size_only_check_accepts_a_flipped_byte(cdir):
    _save(cdir, 5)
    _damage_flip_byte(cdir.step_dir(5))
    assert cdir.find_resume_point(check_checksums=False) == (5, cdir.step_dir(5))


def test_older_steps_are_not_verified(cdir):
    _save(cdir, 5)
    _save(cdir, 10)
    _damage_missing_manifest(cdir.step_dir(5))
    assert cdir.find_resume_point() == (10, cdir.step_dir(10))
    assert cdir.step_dir(5).exists() and not _aside(cdir, 5)


def test_all_invalid_raises_naming_each_step_and_moves_nothing(cdir):
    """No silent fresh start: with no valid step to resume from, nothing is moved aside."""
    for step in (5, 10):
        _save(cdir, step)
        _damage_truncate(cdir.step_dir(step))
    before = _names(cdir)
    with pytest.raises(NoValidCheckpoint) as info:
        cdir.find_resume_point()
    assert sorted(info.value.steps) == [5, 10]
    assert all(why.startswith("size mismatch for actor/__1_0.distcp") for why in info.value.steps.values())
    assert _names(cdir) == before
    (cdir.root / "global_step_5").rename(cdir.root / "elsewhere")
    shutil.rmtree(cdir.step_dir(10))
    with pytest.raises(NoValidCheckpoint, match="the tracker names a step"):  # the tracker alone
        cdir.find_resume_point()


def test_repeated_corruption_of_a_step_never_overwrites_an_aside_dir(cdir):
    _save(cdir, 5)
    for _ in range(3):
        cdir.step_dir(10).mkdir(parents=True)
        assert cdir.find_resume_point() == (5, cdir.step_dir(5))
    assert len(_aside(cdir, 10)) == 3


# -- clean-up, archive, delete -------------------------------------------------------------------------


def test_cleanup_removes_only_temp_leftovers(cdir, caplog):
    _save(cdir, 5)
    leftovers = [cdir.new_temp_dir(10), cdir.root / f"{TEMP_PREFIX}{TRACKER_FILE}-1-ab"]
    leftovers[1].write_text("7")
    (leftovers[0] / "actor").mkdir()
    (cdir.root / "run_0").mkdir()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert sorted(cdir.cleanup_temp_dirs()) == sorted(leftovers)
    assert _names(cdir) == ["global_step_5", TRACKER_FILE, "run_0"]
    assert all(str(p) in caplog.text for p in leftovers)
    assert cdir.cleanup_temp_dirs() == []


def test_archive_twice_keeps_both_runs(cdir):
    assert cdir.archive_existing() is None
    _save(cdir, 5)
    _save(cdir, 10)
    cdir.step_dir(15).mkdir()
    cdir.find_resume_point()  # moves 15 aside
    assert cdir.archive_existing() == cdir.root / "run_0"
    assert _names(cdir) == ["run_0"]
    _save(cdir, 5)
    assert cdir.archive_existing() == cdir.root / "run_1"
    run0, run1 = CheckpointDir(cdir.root / "run_0"), CheckpointDir(cdir.root / "run_1")
    assert [s for s, _ in run0.list_step_dirs()] == [5, 10] and len(_aside(run0, 15)) == 1
    assert run0.find_resume_point() == (10, run0.step_dir(10))
    assert run1.find_resume_point() == (5, run1.step_dir(5))
    assert cdir.archive_existing() is None
    assert cdir.find_resume_point() is None


def test_archive_index_follows_the_highest_existing(cdir):
    (cdir.root / "run_4").mkdir(parents=True)
    cdir.write_tracker(3)
    assert cdir.archive_existing() == cdir.root / "run_5"
    assert (cdir.root / "run_5" / TRACKER_FILE).read_text() == "3\n"


def test_delete_step(cdir):
    for step in (5, 10):
        _save(cdir, step)
    assert cdir.delete_step(5) is True
    assert _names(cdir) == ["global_step_10", TRACKER_FILE]
    assert cdir.delete_step(5) is False  # a retried call
    with pytest.raises(CheckpointError, match="tracker names this step"):
        cdir.delete_step(10)
    assert cdir.step_dir(10).exists()
