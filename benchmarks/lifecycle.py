"""One run's life through the real driver, timed: fresh start, an actor rank SIGKILLed, in-job recovery
(from the newest step's copy in memory: runner.checkpoint.memory_replicas=1), then the whole job SIGKILLed
(a lost head node) and started again with the same command (a cold restart, from storage).

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


@dataclass(frozen=True)
class Lifecycle:
    fresh_first_step_s: float  # launch -> first finished step, starting fresh
    in_job_recovery_s: float  # SIGKILL of an actor rank -> next finished step (the 'recovered' event)
    coordinator_recovery_s: float  # the same as the coordinator counts it (from catching the failure)
    cold_restart_s: float  # SIGKILL of the whole job -> next finished step after starting it again
    resume_first_step_s: float  # launch -> first finished step, resuming (part of the cold restart)
    resumed_step: int  # the checkpoint the cold restart resumed from
    in_job_split: dict  # where the in-job recovery's time went (recovery_split) and its source


def recovery_split(failure: dict, recovered: dict, killed_at: float) -> dict:
    """Where a recovery's time went, from its events: detect (the kill to the failure event), backoff,
    replace (resources, new worker processes, their process group), load, weight sync, and the source."""
    return {"detect_s": round(failure["time"] - killed_at, 2), "backoff_s": round(failure.get("backoff_s", 0.0), 2),
            **{k: round(recovered[k], 2) for k in ("start_s", "load_s", "sync_s") if k in recovered},
            "source": recovered.get("source")}


def overrides(settings: Settings) -> list[str]:
    return [*model_overrides(settings.e2e_gb), *settings.job_overrides, f"runner.save_interval={SAVE_INTERVAL}",
            "runner.max_steps=100000", "runner.checkpoint.memory_replicas=1"]


@functools.cache
def run_lifecycle(settings: Settings) -> Lifecycle:
    out = settings.work_dir / "lifecycle"
    run = launch(out, "life", overrides(settings))
    try:
        first = run.wait_for("the first step", lambda r: r.metrics, TIMEOUT_S)[0]["time"]
        # a checkpoint committed and a step beyond it, so that recovery has something to resume and redo
        run.wait_for("a committed checkpoint", checkpoint_after(0), TIMEOUT_S)
        in_job, coordinator_s, recovered_step, split = _kill_an_actor_rank(run)
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
                     int(resumed[0]["step"]), split)


def checkpoint_after(step: int):
    """A predicate: a checkpoint newer than ``step`` is committed and one more step has finished."""
    def check(run: DriverRun) -> bool:
        tracker = run.run_dir / CHECKPOINTS_DIR / TRACKER_FILE
        committed = int(tracker.read_text()) if tracker.exists() else -1
        return committed > step and bool(run.metrics) and run.metrics[-1]["step"] > committed
    return check


def step_just_finished(run: DriverRun) -> bool:
    return bool(run.metrics) and time.time() - run.metrics[-1]["time"] < 0.1


def _kill_an_actor_rank(run: DriverRun) -> tuple[float, float, int, dict]:
    """SIGKILL the last actor rank right after a step finished; seconds until the next finished step (as
    seen here and as the coordinator counts them), that step, and the recovery's split."""
    run.wait_for("a finished step", step_just_finished, TIMEOUT_S)
    pids = worker_pids(run, "ActorWorker")
    if not pids:
        raise RuntimeError("no actor worker processes found under the driver")
    killed_at = time.time()
    os.kill(pids[-1], signal.SIGKILL)
    recovered = run.wait_for("recovery", lambda r: r.events_named("recovered"), TIMEOUT_S)[0]
    split = recovery_split(run.events_named("failure")[0], recovered, killed_at)
    return recovered["time"] - killed_at, float(recovered["seconds_to_next_step"]), int(recovered["step"]), split
