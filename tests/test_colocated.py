"""runner.placement colocated: each actor rank's process also hosts a rollout engine and the reference.

One job loses a rank mid-step (SIGKILL: the process takes all three roles; recovered in-job), gets a
preemption notice on another rank (SIGTERM: the step it is in is saved off the grid, recovered without
spending the budget), then loses the whole job (SIGKILL of its session), and the same command then ends with
the weights and per-step rewards of an uninterrupted colocated run, bit for bit, with retention and the
periodic Hugging Face export working as in split placement. A colocated checkpoint resumes split and that one colocated again,
with the same files in both placements (one rollout state per engine)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from rayrl.checkpoint.format import HF_DIR, M_FILES, rollout_state_file
from rayrl.checkpoint.manifest import read_manifest
from tests.support import (
    RECOVERY_STEPS, WITH_REFERENCE, assert_same_weights, checkpoints_dir, events_named, final_weights,
    kill_session, last_step, output_of, pid_busy_in, rewards, run_rayrl, spawn_rayrl, tracker_step,
    uninterrupted_run, wait_running,
)

pytestmark = pytest.mark.slow

COLOCATED = (*RECOVERY_STEPS, WITH_REFERENCE, "runner.placement=colocated")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, *COLOCATED)


def test_rank_kill_notice_and_job_kill_end_bit_exact(uninterrupted, tmp_path):
    keep = ("runner.checkpoint.max_to_keep=3", "runner.checkpoint.export_hf_every=8")
    proc = spawn_rayrl(tmp_path, *COLOCATED, *keep)
    try:
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4, 300, "the checkpoint of step 4")
        os.kill(pid_busy_in(proc.pid, "ray::ColocatedActorWorker.train_step", timeout=60), signal.SIGKILL)
        wait_running(proc, lambda: events_named(tmp_path, "recovered") and last_step(tmp_path) >= 9,
                     300, "the recovery and step 9")
        os.kill(pid_busy_in(proc.pid, "ray::ColocatedActorWorker", timeout=60), signal.SIGTERM)
        noticed_after = last_step(tmp_path)
        wait_running(proc, lambda: len(events_named(tmp_path, "recovered")) == 2
                     and (tracker_step(tmp_path) or 0) >= 12, 300, "the second recovery and the checkpoint of 12")
    finally:
        kill_session(proc)
    killed, preempted = events_named(tmp_path, "failure")
    assert killed["what"].startswith("actor[") and killed["replaced"] == ["actor"] and killed["counted"], killed
    assert preempted["preemption"] and not preempted["counted"] and preempted["what"].startswith("actor["), preempted
    resumed_from = events_named(tmp_path, "recovered")[1]["resumed_from"]
    assert noticed_after <= resumed_from <= noticed_after + 2 and resumed_from % 4, (noticed_after, resumed_from)
    done = run_rayrl(tmp_path, *COLOCATED, *keep)
    assert done.returncode == 0, output_of(proc)[-2000:] + done.stdout[-3000:]
    assert events_named(tmp_path, "resumed")[-1]["step"] >= 12
    assert rewards(tmp_path) == rewards(uninterrupted)
    assert_same_weights(final_weights(tmp_path, 20), final_weights(uninterrupted, 20))
    kept = sorted(p.name for p in checkpoints_dir(tmp_path).glob("global_step_*"))
    assert kept == ["global_step_12", "global_step_16", "global_step_20"], kept
    exported = read_manifest(checkpoints_dir(tmp_path) / "global_step_16")[M_FILES]
    assert f"{HF_DIR}/model-00001-of-00001.safetensors" in exported and f"{HF_DIR}/config.json" in exported


def test_a_checkpoint_resumes_in_the_other_placement(uninterrupted, tmp_path):
    """Colocated step 8 -> split to step 10 -> colocated to step 12. The split run's one engine checks engine 0's
    file; the colocated engine beyond the split checkpoint's one needs none (its seeds derive from the step)."""
    legs = [("split", 8, 10, checkpoints_dir(uninterrupted)), ("colocated", 10, 12, None)]
    for placement, start, end, source in legs:
        out = tmp_path / placement
        source = source or checkpoints_dir(tmp_path / "split")
        done = run_rayrl(out, *COLOCATED, f"runner.placement={placement}", f"runner.max_steps={end}",
                         f"runner.resume_dir={source / f'global_step_{start}'}", "runner.resume_mode=disable")
        assert done.returncode == 0, done.stdout[-3000:]
        assert [e["step"] for e in events_named(out, "resumed")] == [start]
        (changed,) = events_named(out, "config_changed")
        assert changed["changed"]["runner.placement"][1] == placement, changed
    colocated_files = _files(checkpoints_dir(uninterrupted) / "global_step_8")
    split_files = _files(checkpoints_dir(tmp_path / "split") / "global_step_10")
    assert colocated_files - split_files == {f"rollout/{rollout_state_file(1)}"}, (colocated_files, split_files)
    assert _files(checkpoints_dir(tmp_path / "colocated") / "global_step_12") == colocated_files
    saved = json.loads((checkpoints_dir(tmp_path / "colocated") / "global_step_12" / "trainer_state.json").read_text())
    assert saved["world_sizes"] == {"actor": 2, "rollout": 2}


def _files(step_dir) -> set[str]:
    return {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
