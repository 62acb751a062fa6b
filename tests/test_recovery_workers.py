"""In-job recovery from the loss of a worker: SIGKILL of a rollout worker, of one actor rank and of the
reference worker, each in the middle of its part of a step; SIGTERM (a preemption notice) to a worker; a
hung worker. Each is detected, the lost worker's place is taken by a standby (runner.standby) or its group is
replaced (the others keep their processes). A lost rollout worker's samples are regenerated in the job
(nothing reloaded, no step redone); for the others every group resumes from this run's latest checkpoint
(from its copy in memory in the SIGKILL run, runner.checkpoint.memory_replicas=1; from storage in the
other). The run ends with exit 0 and the same weights and per-step rewards, bit for bit, as a run that was
never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.support import (
    RECOVERY_STEPS, WITH_REFERENCE, assert_same_weights, checkpoints_dir, descendants, events_named, final_weights,
    hang_env, kill_session, last_step, output_of, pid_busy_in, recovery_times, rewards, spawn_rayrl, tracker_step,
    uninterrupted_run, wait_running,
)
from rayrl.checkpoint.format import ACTOR_DIR, step_dir_name

pytestmark = pytest.mark.slow

STEPS = (*RECOVERY_STEPS, WITH_REFERENCE)  # every role, the reference included

# (process title while busy mid-step, the worker's label in events, checkpoint to wait for before the kill)
KILLS = [("ray::RolloutWorker.generate", "rollout[0]", 4),
         ("ray::ActorWorker.train_step", "actor[", 8),
         ("ray::ReferenceWorker.logprobs", "reference[0]", 12)]
ROLES = {"actor": "ray::ActorWorker", "rollout": "ray::RolloutWorker", "reference": "ray::ReferenceWorker"}


def worker_pids(root_pid: int) -> dict[str, set[int]]:
    """The pids of each role's workers below the driver."""
    below = descendants(root_pid)
    return {role: {pid for pid, cmd in below if cmd.split(" ")[0].startswith(title)} for role, title in ROLES.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, *STEPS)


def test_sigkill_of_each_worker_role_mid_step(reference, tmp_path):
    """With standbys (one actor, two rollout) and memory replicas: one rollout standby is killed while idle
    (it is replaced, no recovery); the rollout worker's and the actor rank's places are taken by standbys
    (the surviving rank keeps its process and re-forms the group with the standby); the reference restarts
    in a new process. The rollout worker's standby takes its index, gets the actor's current weights and
    regenerates the lost chunk of the step in the job: the actor is not reloaded and no step is redone. The
    two other recoveries load the newest committed step from memory. Right after the actor
    rank's kill the test moves that step's actor files out of the checkpoint directory: the recovery still
    resumes from that step, so it read none of them."""
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.max_restarts=3", "runner.checkpoint.memory_replicas=1",
                       "runner.standby.actor=1", "runner.standby.rollout=2")
    killed_at, pids, killed = [], [], []  # pids: each role's worker pids before each kill, then at the end
    moved = None  # (step, where its actor files went)
    try:
        wait_running(proc, lambda: len(standby_pids(tmp_path, "actor")) == 1 and len(standby_pids(tmp_path, "rollout")) == 2,
                     300, "the standbys ready")
        idle = standby_pids(tmp_path, "rollout")[1]
        os.kill(idle, signal.SIGKILL)
        wait_running(proc, lambda: events_named(tmp_path, "standby_lost"), 300, "the idle standby's loss")
        for n, (title, _, checkpoint) in enumerate(KILLS):
            wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= checkpoint and
                         len(events_named(tmp_path, "recovered")) == n, 300, f"checkpoint of step {checkpoint}")
            pids.append(worker_pids(proc.pid))
            killed.append(pid_busy_in(proc.pid, title, timeout=60))
            os.kill(killed[-1], signal.SIGKILL)
            killed_at.append(time.time())
            if title.startswith("ray::ActorWorker"):  # the coordinator is stuck in the step: nothing commits now
                newest = tracker_step(tmp_path)
                moved = newest, tmp_path / "moved-actor-files"
                shutil.move(checkpoints_dir(tmp_path) / step_dir_name(newest) / ACTOR_DIR, moved[1])
            wait_running(proc, lambda: len(events_named(tmp_path, "recovered")) > n, 300, f"recovery {n + 1}")
        pids.append(worker_pids(proc.pid))
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    failures = events_named(tmp_path, "failure")  # the idle standby's loss is none
    assert len(failures) == 3 and all(f["what"].startswith(label) for f, (_, label, _) in zip(failures, KILLS))
    assert all(f["counted"] and f["node"] and f["pid"] for f in failures), failures
    (lost,) = events_named(tmp_path, "standby_lost")
    assert (lost["role"], lost["pid"]) == ("rollout", idle), lost
    recovered = events_named(tmp_path, "recovered")
    assert [e["replaced_by"] for e in recovered] == [
        {"rollout": "standby"}, {"actor": "standby"}, {"reference": "new process"}], recovered
    for n, (f, (_, label, _)) in enumerate(zip(failures, KILLS)):  # only the killed worker's place changed
        role = label.split("[")[0]
        assert f["replaced"] == [role], f
        before, after = pids[n], pids[n + 1]
        assert killed[n] not in after[role] and before[role], (role, pids)
        if role == "reference":  # no standby: a new process
            assert not before[role] & after[role], pids
        kept = [r for r in ROLES if not r == role == "reference"]  # a standby's role: its other workers too
        assert all(before[r] - {killed[n]} <= after[r] for r in kept), (role, pids)
        if role != "reference":  # the standby that took the place was ready before the kill
            assert standby_pids(tmp_path, role)[0] in before[role] & after[role], (role, pids)
    in_job, *reloaded = recovered
    assert in_job["regenerated"] == [in_job["step"]] and in_job["resumed_from"] == in_job["step"] - 1, in_job
    assert in_job["source"] == "memory" and "load_s" not in in_job and failures[0]["in_job"], in_job
    assert not [e for e in events_named(tmp_path, "resumed") if e["time"] < in_job["time"]], "a reload"
    assert 0 < in_job["seconds_to_next_step"] < 300, in_job
    for e, (_, _, checkpoint) in zip(reloaded, KILLS[1:]):
        assert e["resumed_from"] >= checkpoint and e["resumed_from"] % 4 == 0, e
        assert 0 < e["seconds_to_next_step"] < 300, e
        assert e["source"] == "memory" and e["load_s"] >= 0 and e["sync_s"] >= 0, e
    assert recovered[1]["group_s"] > 0, recovered[1]  # the actor group re-formed with the standby
    assert recovered[1]["resumed_from"] == moved[0], (recovered[1], moved)  # its actor files were not there
    assert (moved[1] / ".metadata").is_file(), moved
    assert not (checkpoints_dir(tmp_path) / step_dir_name(moved[0]) / ACTOR_DIR).exists(), moved
    (memory,) = events_named(tmp_path, "memory_replicas")
    assert memory["enabled"] and memory["bytes_per_rank"] > 0, memory
    assert "replacing actor (standby)" in out and "recovered from the loss of actor[" in out
    assert rewards(tmp_path) == rewards(reference)  # every step once, same values
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    print("\n".join(["", *recovery_times(tmp_path, killed_at)]))


def standby_pids(output_dir, role: str) -> list[int]:
    """The pids of the standbys of ``role`` in the order they became ready."""
    return [e["pid"] for e in events_named(output_dir, "standby_ready") if e["role"] == role]


def test_sigterm_saves_the_current_step_and_a_hang_hits_the_step_timeout(reference, tmp_path):
    """One run, budget 1: SIGTERM to an actor rank (a preemption notice) saves the step it is in, off the
    save grid, and recovers from it without spending the budget; then a rollout worker hangs in step 13
    (tests/hang_hook) and runner.step_timeout_s catches it, spending the one counted recovery. The hang
    begins right after step 12's asynchronous save was started: the recovery keeps the actor ranks, lets
    their shards finish and commits step 12 (only the coordinator's step loop, stuck in step 13, would
    have), so it resumes from 12, not from 8. Memory replicas are asked for with a budget far below what they
    need: they are off, said once, and both recoveries read storage."""
    env = hang_env("13")
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.max_restarts=1", "runner.step_timeout_s=8",
                       "runner.checkpoint.memory_replicas=1", "runner.checkpoint.memory_budget_gb=0.00001", env=env)
    try:
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4 and last_step(tmp_path) >= 5, 300,
                     "step 5, after the checkpoint of step 4")
        os.kill(pid_busy_in(proc.pid, "ray::ActorWorker"), signal.SIGTERM)
        noticed_after = last_step(tmp_path)
        rc = proc.wait(timeout=400)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    preempted, hung = events_named(tmp_path, "failure")
    assert preempted["preemption"] and not preempted["counted"], preempted
    assert "preemption notice (SIGTERM)" in preempted["cause"] and preempted["what"].startswith("actor[")
    saved = [e["step"] for e in events_named(tmp_path, "save")]
    first, second = events_named(tmp_path, "recovered")
    # no step lost: every step finished when the notice came is in the checkpoint taken at the next boundary
    assert noticed_after <= first["resumed_from"] <= noticed_after + 2 and first["resumed_from"] in saved, (
        first, noticed_after, saved)
    assert hung["what"] == "rollout[0]" and "no progress within runner.step_timeout_s=8" in hung["cause"], hung
    assert hung["counted"] and hung["restarts"] == 1 and second["resumed_from"] == 12, (hung, second)
    assert first["source"] == second["source"] == "storage", (first, second)
    (memory,) = events_named(tmp_path, "memory_replicas")
    assert not memory["enabled"] and "exceeds runner.checkpoint.memory_budget_gb=1e-05" in memory["message"], memory
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    print("\n".join(["", *recovery_times(tmp_path)]))
