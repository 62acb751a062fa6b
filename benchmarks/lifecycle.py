"""One run's life through the real driver, timed: fresh start, a rollout worker and then an actor rank
SIGKILLed, each recovered in the job (the lost worker's place taken by a standby: runner.standby.actor /
.rollout = 1; the rollout worker's samples regenerated with nothing reloaded, the actor rank's loss from the
newest step's copy in memory: runner.checkpoint.memory_replicas=1), then the whole job
SIGKILLed (a lost head node) and started again with the same command (a cold restart, from storage). Quick
mode (the smoke test) runs no standbys and kills only the actor rank, which a new process replaces.

The recovery (Q3) and resume-cost (Q5) benchmarks both read their figures from it, so it runs once per
benchmark run (memoized) instead of once per question.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass

from benchmarks.common import Settings
from benchmarks.dist import model_overrides
from benchmarks.driver import DriverRun, launch, worker_pids
from rayrl.checkpoint.format import CHECKPOINTS_DIR, TRACKER_FILE

SAVE_INTERVAL = 2
TIMEOUT_S = 600.0
STANDBYS = ("runner.standby.actor=1", "runner.standby.rollout=1")


@dataclass(frozen=True)
class Lifecycle:
    fresh_first_step_s: float  # launch -> first finished step, starting fresh
    in_job_recovery_s: float  # SIGKILL of an actor rank -> next finished step (the 'recovered' event)
    coordinator_recovery_s: float  # the same as the coordinator counts it (from catching the failure)
    cold_restart_s: float  # SIGKILL of the whole job -> next finished step after starting it again
    resume_first_step_s: float  # launch -> first finished step, resuming (part of the cold restart)
    resumed_step: int  # the checkpoint the cold restart resumed from
    in_job_split: dict  # where the in-job recovery's time went (recovery_split) and its source
    rollout_recovery_s: float | None  # SIGKILL of a rollout worker -> next finished step (None: quick mode)
    rollout_split: dict | None


def recovery_split(failure: dict, recovered: dict, killed_at: float) -> dict:
    """Where a recovery's time went, from its events: detect (the kill to the failure event), backoff,
    replace (resources, new worker processes or standbys), re-form the actor's process group, load, weight
    sync, the source and how each group was replaced."""
    split = {"detect_s": round(failure["time"] - killed_at, 2), "backoff_s": round(failure.get("backoff_s", 0.0), 2),
             **{k: round(recovered[k], 2) for k in ("start_s", "group_s", "load_s", "sync_s") if k in recovered},
             "source": recovered.get("source"), "replaced_by": recovered.get("replaced_by")}
    if "regenerated" in recovered:  # in the job: nothing reloaded, these steps' lost samples generated again
        split["regenerated"] = recovered["regenerated"]
    if "group_s" in recovered:  # start_s: the replacement (resources, processes) and the process group
        split["replace_s"] = round(recovered["start_s"] - recovered["group_s"], 2)
    return split


def overrides(settings: Settings) -> list[str]:
    return [*model_overrides(settings.e2e_gb), *settings.job_overrides, f"runner.save_interval={SAVE_INTERVAL}",
            "runner.max_steps=100000", "runner.checkpoint.memory_replicas=1", *(() if settings.quick else STANDBYS)]


@functools.cache
def run_lifecycle(settings: Settings) -> Lifecycle:
    out = settings.work_dir / "lifecycle"
    run = launch(out, "life", overrides(settings))
    try:
        first = run.wait_for("the first step", lambda r: r.metrics, TIMEOUT_S)[0]["time"]
        # a checkpoint committed and a step beyond it, so that recovery has something to resume and redo
        run.wait_for("a committed checkpoint", checkpoint_after(0), TIMEOUT_S)
        rollout_s = rollout_split = None
        if not settings.quick:  # standbys of both roles ready, then a rollout worker's loss
            run.wait_for("a standby of each role", lambda r: len(r.events_named("standby_ready")) >= 2, TIMEOUT_S)
            rollout_s, _, recovered_step, rollout_split = _kill_a_worker(run, "RolloutWorker", 0)
            if "regenerated" not in rollout_split:
                raise RuntimeError(f"the rollout worker's loss was not recovered in the job: {rollout_split}")
            run.wait_for("a checkpoint after recovery", checkpoint_after(recovered_step), TIMEOUT_S)
            run.wait_for("the new standby", lambda r: len(r.events_named("standby_ready")) >= 3, TIMEOUT_S)
        in_job, coordinator_s, recovered_step, split = _kill_a_worker(run, "ActorWorker",
                                                                      0 if settings.quick else 1)
        run.wait_for("a checkpoint after recovery", checkpoint_after(recovered_step), TIMEOUT_S)
        run.wait_for("a finished step", step_just_finished, TIMEOUT_S)
        killed_at = time.time()
        run.kill()
    except BaseException:
        run.kill()
        raise
    again = launch(out, "life", overrides(settings))
    try:
        seen = again.wait_for("the first step after the restart", lambda r: r.metrics, TIMEOUT_S)[0]["time"]
        resumed = again.events_named("resumed")
    finally:
        again.kill()
    if not resumed:
        raise RuntimeError("the restarted run did not resume from a checkpoint")
    return Lifecycle(first - run.started, in_job, coordinator_s, seen - killed_at, seen - again.started,
                     int(resumed[0]["step"]), split, rollout_s, rollout_split)


def checkpoint_after(step: int):
    """A predicate: a checkpoint newer than ``step`` is committed and one more step has finished."""
    def check(run: DriverRun) -> bool:
        tracker = run.run_dir / CHECKPOINTS_DIR / TRACKER_FILE
        committed = int(tracker.read_text()) if tracker.exists() else -1
        return committed > step and bool(run.metrics) and run.metrics[-1]["step"] > committed
    return check


def step_just_finished(run: DriverRun) -> bool:
    return bool(run.metrics) and time.time() - run.metrics[-1]["time"] < 0.1


def _kill_a_worker(run: DriverRun, actor_class: str, recoveries_before: int) -> tuple[float, float, int, dict]:
    """SIGKILL the last worker of ``actor_class`` that was never a standby, right after a step finished;
    seconds until the next finished step (as seen here and as the coordinator counts them), that step, and
    the recovery's split."""
    run.wait_for("a finished step", step_just_finished, TIMEOUT_S)
    spares = {e["pid"] for e in run.events_named("standby_ready")}
    pids = [p for p in worker_pids(run, actor_class) if p not in spares]
    if not pids:
        raise RuntimeError(f"no {actor_class} processes found under the driver")
    killed_at = time.time()
    os.kill(pids[-1], signal.SIGKILL)
    recovered = run.wait_for("recovery", lambda r: r.events_named("recovered")[recoveries_before:],
                             TIMEOUT_S)[0]
    split = recovery_split(run.events_named("failure")[recoveries_before], recovered, killed_at)
    return recovered["time"] - killed_at, float(recovered["seconds_to_next_step"]), int(recovered["step"]), split
