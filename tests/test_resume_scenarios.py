"""Resume in every situation a user meets, with real runs: corrupt newest checkpoints, an explicit resume_dir
(into a new experiment, or back to an older step of the same run), resume_mode=disable twice, an epoch
boundary, nothing left to do, a checkpoint that carries code, and a checkpoint of another model shape.

One uninterrupted reference run is shared; every other run starts from a copy of its checkpoints (a copy is
exactly what a kill after that step's save leaves behind) and must end bit-exact with it.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from rayrl.checkpoint.compat import read_dcp_metadata, shape_mismatch
from rayrl.checkpoint.errors import CheckpointError
from rayrl.checkpoint.manager import DefaultCheckpointManager
from rayrl.checkpoint.manifest import build_manifest, file_digest, read_manifest, verify_checkpoint, write_manifest
from rayrl.config import CheckpointConfig
from tests.support import (
    RESUME_STEPS, assert_same_weights, checkpoints_dir, copy_run, events_named, final_weights,
    rayrl_stderr_lines, read_metrics, rewards, run_rayrl, run_rayrl_split, uninterrupted_run,
)

STEPS = RESUME_STEPS  # the checkpoint of step 4 sits on the epoch boundary


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = uninterrupted_run(tmp_path_factory, *STEPS)
    assert sorted(p.name for p in checkpoints_dir(out).glob("global_step_*")) == [
        "global_step_2", "global_step_4", "global_step_6"]
    assert [m["epoch"] for m in read_metrics(out)] == [0, 0, 0, 0, 1, 1]
    return out


def _tail(proc) -> str:
    return (proc.stdout + (proc.stderr or ""))[-4000:]


def _truncate(path: Path, nbytes: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:-nbytes])


def _alter_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its CRC32: equal trees hold the same bytes."""
    return {p.relative_to(root).as_posix(): file_digest(p)["crc32"] for p in sorted(root.rglob("*")) if p.is_file()}


class _Plant:
    """Pickles as a call to ``open(marker, "w")``: the marker appearing means code in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ----------------------------------------------------------------------------------------- corruption


def test_corrupt_newest_checkpoints_are_moved_aside_and_the_run_ends_bit_exact(reference, tmp_path):
    """A truncated shard (step 6) and a same-size altered byte (step 4): both detected and moved aside with
    the damage kept, resume falls back to step 2, metrics hold each step once, the end is bit-exact."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    _truncate(ckpts / "global_step_6/actor/__1_0.distcp")
    _alter_byte(ckpts / "global_step_4/actor/__0_0.distcp")
    proc = run_rayrl(tmp_path, *STEPS)
    assert proc.returncode == 0, _tail(proc)
    assert f"Resumed from {ckpts / 'global_step_2'}: next step 3" in proc.stdout
    for step, damaged, reason in ((6, "actor/__1_0.distcp", "size mismatch"),
                                  (4, "actor/__0_0.distcp", "checksum mismatch")):
        aside = list(ckpts.glob(f"global_step_{step}.corrupt-*"))
        assert len(aside) == 1, sorted(p.name for p in ckpts.iterdir())
        # never deleted, never repaired: kept as found
        assert file_digest(aside[0] / damaged)["crc32"] != read_manifest(aside[0])["files"][damaged]["crc32"]
        assert f"{reason} for {damaged}" in proc.stdout  # the warning names the file
    assert rewards(tmp_path) == rewards(reference)  # steps 3..6 of the copied metrics dropped, then written once
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference, 6))


def test_no_valid_checkpoint_exits_2_naming_each_step_and_touches_nothing(reference, tmp_path):
    """Every step damaged: no silent fresh start. Exit 2 with one line naming each step and why, and
    nothing moved, renamed, deleted or truncated (checkpoints and metrics.jsonl as they were)."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    _truncate(ckpts / "global_step_6/actor/__1_0.distcp")
    _alter_byte(ckpts / "global_step_4/actor/__0_0.distcp")
    (ckpts / "global_step_2/manifest.json").unlink()
    before, metrics_before = _tree(ckpts), read_metrics(tmp_path)
    proc = run_rayrl_split(tmp_path, *STEPS, "runner.max_steps=8")
    assert proc.returncode == 2, _tail(proc)
    lines = rayrl_stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rayrl: config error: runner.resume_mode:"), lines[0]
    for problem in ("global_step_6: size mismatch for actor/__1_0.distcp",
                    "global_step_4: checksum mismatch for actor/__0_0.distcp",
                    "global_step_2: no manifest.json", "runner.resume_mode=disable"):
        assert problem in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert _tree(ckpts) == before
    assert read_metrics(tmp_path) == metrics_before
    (event,) = events_named(tmp_path, "no_valid_checkpoint")
    assert sorted(event["steps"]) == ["2", "4", "6"]
    assert event["steps"]["6"].startswith("size mismatch for actor/__1_0.distcp"), event
    assert event["steps"]["4"] == "checksum mismatch for actor/__0_0.distcp", event


def test_an_io_error_reading_a_step_is_an_infrastructure_failure_never_corruption(reference, tmp_path):
    """The newest step's manifest reads with EIO (a symlink to /proc/self/mem, which fails every read at
    offset 0, root or not): retried under the restart budget, never moved aside, and the run fails with
    the error once the budget is spent."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    manifest = ckpts / "global_step_6/manifest.json"
    manifest.unlink()
    manifest.symlink_to("/proc/self/mem")
    proc = run_rayrl_split(tmp_path, *STEPS, "runner.max_steps=8", "runner.max_restarts=1")
    assert proc.returncode == 1, _tail(proc)
    failures = events_named(tmp_path, "failure")
    assert [(f["what"], f["counted"]) for f in failures] == [("checkpoint storage", True)] * 2, failures
    assert all("Input/output error" in f["cause"] for f in failures), failures
    assert manifest.is_symlink() and not list(ckpts.glob("global_step_*.corrupt-*"))
    assert "recovery budget spent" in proc.stderr


def test_checkpoint_io_has_its_own_timeout_and_the_failure_names_it(reference, tmp_path):
    """runner.checkpoint.timeout_s bounds a load (not runner.step_timeout_s): past it the load is an
    infrastructure failure that names the key, the bound and what timed out (budget 0: the run fails)."""
    copy_run(reference, tmp_path)
    proc = run_rayrl_split(tmp_path, *STEPS, "runner.max_steps=8", "runner.checkpoint.timeout_s=0.001",
                           "runner.max_restarts=0")
    assert proc.returncode == 1, _tail(proc)
    (failure,) = events_named(tmp_path, "failure")
    step_dir = checkpoints_dir(tmp_path) / "global_step_6"
    assert (f"no progress within runner.checkpoint.timeout_s=0.001 s (checkpoint load from {step_dir}/actor)"
            in failure["cause"]), failure


def test_resuming_after_the_last_step_exits_0_with_nothing_to_do(reference, tmp_path):
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    before, metrics_before = _tree(ckpts), read_metrics(tmp_path)
    proc = run_rayrl(tmp_path, *STEPS)
    assert proc.returncode == 0, _tail(proc)
    assert "Nothing left to do" in proc.stdout
    assert _tree(ckpts) == before
    assert read_metrics(tmp_path) == metrics_before


# ----------------------------------------------------------------------------------------- explicit resume_dir


def test_explicit_resume_dir_into_a_new_experiment_continues_at_the_epoch_boundary(reference, tmp_path):
    """From the source's step 4 (the last step of epoch 0): steps count on from 5 with epoch 1's data and
    the run reaches the source's final weights; the source is left untouched."""
    source = checkpoints_dir(reference) / "global_step_4"
    source_before = _tree(checkpoints_dir(reference))
    proc = run_rayrl(tmp_path, *STEPS, f"runner.resume_dir={source}")
    assert proc.returncode == 0, _tail(proc)
    assert f"Resumed from {source}: next step 5" in proc.stdout
    assert [(m["step"], m["epoch"]) for m in read_metrics(tmp_path)] == [(5, 1), (6, 1)]
    assert rewards(tmp_path) == rewards(reference)[4:]
    assert sorted(p.name for p in checkpoints_dir(tmp_path).glob("global_step_*")) == ["global_step_6"]
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference, 6))
    assert _tree(checkpoints_dir(reference)) == source_before


@pytest.mark.parametrize("damage, problem", [
    ("missing", "does not exist"),
    ("no_manifest", "no manifest.json"),
    ("checksum", "checksum mismatch for actor/__0_0.distcp"),
])
def test_resume_dir_that_is_not_a_complete_checkpoint_exits_2_with_one_line(reference, tmp_path, damage, problem):
    step_dir = tmp_path / "elsewhere" / "global_step_2"
    if damage != "missing":
        shutil.copytree(checkpoints_dir(reference) / "global_step_2", step_dir)
    if damage == "no_manifest":
        (step_dir / "manifest.json").unlink()
    if damage == "checksum":
        _alter_byte(step_dir / "actor/__0_0.distcp")
    out = tmp_path / "out"
    proc = run_rayrl_split(out, *STEPS, f"runner.resume_dir={step_dir}", timeout=120)
    assert proc.returncode == 2, _tail(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rayrl: config error: runner.resume_dir:") and str(step_dir) in lines[0], lines[0]
    assert problem in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists()  # refused before anything started


def test_explicit_resume_from_an_older_step_of_the_same_run_supersedes_the_newer_steps(reference, tmp_path):
    """Back to step 2 of this very run while 4 and 6 exist: those are moved aside (kept intact), the run
    ends bit-exact, and a relaunch with the same command (as run_main.sh does) or an auto-resume continues
    the new timeline instead of jumping back to step 2 or onto the abandoned one."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    start = ckpts / "global_step_2"
    proc = run_rayrl(tmp_path, *STEPS, f"runner.resume_dir={start}")
    assert proc.returncode == 0, _tail(proc)
    assert f"Resumed from {start}: next step 3" in proc.stdout
    for step in (4, 6):
        aside = list(ckpts.glob(f"global_step_{step}.superseded-*"))
        assert len(aside) == 1, sorted(p.name for p in ckpts.iterdir())
        assert _tree(aside[0]) == _tree(checkpoints_dir(reference) / f"global_step_{step}")
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference, 6))

    manager = DefaultCheckpointManager(CheckpointConfig(), str(ckpts))
    listing = sorted(p.name for p in ckpts.iterdir())
    assert manager.prepare(str(start), "auto", restarted=False) == str(ckpts / "global_step_6")  # relaunch
    assert manager.prepare(None, "auto", restarted=False) == str(ckpts / "global_step_6")  # plain auto-resume
    assert sorted(p.name for p in ckpts.iterdir()) == listing  # nothing more moved aside


# ----------------------------------------------------------------------------------------- resume_mode=disable


def test_resume_mode_disable_twice_keeps_run_0_and_run_1_intact(reference, tmp_path):
    """The first time through the whole driver (a fresh start at step 1), the second time through the
    manager's prepare alone (the same call the coordinator makes first), to spare a second run."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    original = _tree(ckpts)
    proc = run_rayrl(tmp_path, *STEPS, "runner.max_steps=1", "runner.resume_mode=disable")
    assert proc.returncode == 0, _tail(proc)
    assert "starting fresh at step 1" in proc.stdout and "Resumed from" not in proc.stdout
    assert _tree(ckpts / "run_0") == original
    assert rewards(tmp_path) == rewards(reference)[:1]  # started again at step 1, same as the reference's
    first_run = {k: v for k, v in _tree(ckpts).items() if not k.startswith("run_0/")}
    assert "global_step_1/manifest.json" in first_run

    manager = DefaultCheckpointManager(CheckpointConfig(), str(ckpts))
    assert manager.prepare(None, "disable", restarted=False) is None  # start fresh
    assert _tree(ckpts / "run_0") == original
    assert _tree(ckpts / "run_1") == first_run
    assert sorted(p.name for p in ckpts.iterdir()) == ["run_0", "run_1"]


# ----------------------------------------------------------------------------------------- code in a checkpoint


def test_checkpoint_pt_files_holding_code_are_refused_without_running_it(reference, tmp_path):
    step_dir = tmp_path / "evil" / "global_step_2"
    shutil.copytree(checkpoints_dir(reference) / "global_step_2", step_dir)
    marker = tmp_path / "code-ran"
    for rel in ("rollout/worker_0.pt", "data/data.pt"):
        torch.save(_Plant(marker), step_dir / rel)
    write_manifest(step_dir, build_manifest(step_dir), 2)  # an attacker can update the manifest too
    verify_checkpoint(step_dir)
    proc = run_rayrl_split(tmp_path / "out", *STEPS, f"runner.resume_dir={step_dir}")
    assert proc.returncode == 3, _tail(proc)  # a program error: run_main.sh does not relaunch it
    lines = rayrl_stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert str(step_dir / "rollout/worker_0.pt") in lines[0] and "weights_only=True" in lines[0], lines[0]
    assert not marker.exists()
    torch.load(step_dir / "rollout/worker_0.pt", weights_only=False)  # the payload is live: an unsafe load
    assert marker.exists()  # runs it


def test_dcp_metadata_holding_code_is_refused_without_running_it(reference, tmp_path):
    """DCP's own reader unpickles .metadata unrestricted; rayrl reads it with an allow-list first."""
    actor = Path(shutil.copytree(checkpoints_dir(reference) / "global_step_2/actor", tmp_path / "actor"))
    assert read_dcp_metadata(actor).state_dict_metadata  # the genuine file passes
    marker = tmp_path / "code-ran"
    (actor / ".metadata").write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata: refused .*(builtins|io)\.open"):
        read_dcp_metadata(actor)
    assert not marker.exists()
    with contextlib.suppress(Exception):
        FileSystemReader(str(actor)).read_metadata()
    assert marker.exists()  # torch's own reader would have run it


def test_dcp_item_holding_code_is_refused_without_running_it(reference, tmp_path):
    """Non-tensor DCP items (here the optimizer's lr) are unpickled by DCP with weights_only=False."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    full = tmp_path / "full.pt"
    dcp_to_torch_save(str(checkpoints_dir(reference) / "global_step_2/actor"), str(full))
    state = torch.load(full, weights_only=True)
    marker = tmp_path / "code-ran"
    state["optimizer"]["param_groups"][0]["lr"] = _Plant(marker)
    evil = tmp_path / "evil"
    dcp.save(state, checkpoint_id=str(evil), no_dist=True)
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: item optimizer\.param_groups\.0\.lr: refused"):
        read_dcp_metadata(evil)
    assert not marker.exists()
    with contextlib.suppress(Exception):
        dcp_to_torch_save(str(evil), str(tmp_path / "out.pt"))
    assert marker.exists()  # torch's own loader would have run it


# ----------------------------------------------------------------------------------------- another model


def test_resume_into_a_model_of_another_shape_exits_2_naming_the_mismatch(reference, tmp_path):
    """resume_mode=auto picks the old checkpoint after the user changed the model (and asked for more
    steps: a run already at max_steps has nothing to load): one line, exit 2."""
    copy_run(reference, tmp_path)
    ckpts = checkpoints_dir(tmp_path)
    proc = run_rayrl_split(tmp_path, *STEPS, "runner.max_steps=8", "actor.model.hidden_size=64")
    assert proc.returncode == 2, _tail(proc)
    lines = rayrl_stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"rayrl: config error: actor.model: checkpoint {ckpts / 'global_step_6'} does "
                               "not fit actor.model: model.embed_tokens.weight has shape [100, 32] in the "
                               "checkpoint, [100, 64] in the model"), lines[0]
    assert "Traceback (most recent call last)" not in proc.stderr
    assert (ckpts / "global_step_6").is_dir()  # a valid checkpoint that does not fit is not "corrupt"


def test_shape_mismatch_names_the_first_difference_and_counts_the_rest():
    saved = {"a.weight": (64, 32), "b.weight": (8,), "gone.weight": (1,)}
    assert shape_mismatch(saved, dict(saved)) is None
    assert shape_mismatch(saved, {**saved, "a.weight": (128, 64)}) == (
        "a.weight has shape [64, 32] in the checkpoint, [128, 64] in the model")
    assert shape_mismatch(saved, {"a.weight": (64, 32), "b.weight": (8,), "new.weight": (2,)}) == (
        "new.weight is in the model but not in the checkpoint (and 1 more difference)")
    assert shape_mismatch(saved, {"a.weight": (64, 32), "b.weight": (8,)}) == (
        "gone.weight is in the checkpoint but not in the model")
