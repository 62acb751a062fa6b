"""When the run must stop instead of recovering: past runner.max_restarts it fails (exit 1) with the history
of what died, and starting it again (a cold restart through run_main.sh) resumes and ends bit-exact; a program
error (here: a learning rate that blows the weights up; the gradient norm of step 2 is NaN) stops at once
with the error shown (exit 3), and run_main.sh does not relaunch it."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.support import (
    FAST, RECOVERY_STEPS, REPO, assert_same_weights, env_for_tests, events_named, final_weights, kill_session,
    last_step, output_of, pid_busy_in, rewards, spawn_rayrl, tracker_step,
    uninterrupted_run, wait_running,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, *RECOVERY_STEPS)


def run_main_cmd(output_dir, *overrides: str) -> list[str]:
    return ["bash", str(REPO / "run_main.sh"), f"runner.output_dir={output_dir}", *FAST, *overrides]


def run_main_env() -> dict[str, str]:
    return env_for_tests(RAYRL_SKIP_SETUP="1", VIRTUAL_ENV=os.path.dirname(os.path.dirname(sys.executable)))


def test_past_max_restarts_the_run_fails_with_its_history_and_a_cold_restart_finishes(reference, tmp_path):
    proc = spawn_rayrl(tmp_path, *RECOVERY_STEPS, "runner.max_restarts=1")
    try:
        for n in range(2):
            wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 4 and
                         len(events_named(tmp_path, "failure")) == n and
                         len(events_named(tmp_path, "recovered")) == n, 300, f"a finished step ({n})")
            os.kill(pid_busy_in(proc.pid, "ray::RolloutWorker"), signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 1, out[-3000:]
    (failed,) = events_named(tmp_path, "run_failed")
    assert len(failed["history"]) == 2 and all("rollout[0] (node " in h for h in failed["history"]), failed
    # rayrl's last lines are the cause (Ray may still print a worker-death warning of its own after them)
    lines = out.strip().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("rayrl:"))
    assert lines[last] == "rayrl: run failed: recovery budget spent (runner.max_restarts=1); what died:", lines[-6:]
    history = lines[last + 1:last + 3]
    assert len(history) == 2, lines[-6:]
    assert all(" rollout[0] (node " in line and "ActorDiedError" in line for line in history), history

    # A cold restart of the same run, as a user would do it: run_main.sh started again.
    checkpoint, resumes = tracker_step(tmp_path), len(events_named(tmp_path, "resumed"))
    started = time.time()
    proc = spawn_rayrl(tmp_path, cmd=run_main_cmd(tmp_path, *RECOVERY_STEPS), env=run_main_env())
    try:
        wait_running(proc, lambda: len(events_named(tmp_path, "resumed")) > resumes and
                     last_step(tmp_path) > checkpoint, 300, "the first step after the cold restart")
        cold = time.time() - started
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    assert rc == 0, output_of(proc)[-3000:]
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    print(f"\ncold restart (run_main.sh started again): first step {cold:.1f} s after the launch")


def test_a_program_error_is_not_retried(tmp_path):
    proc = spawn_rayrl(tmp_path, cmd=run_main_cmd(tmp_path, *RECOVERY_STEPS, "actor.optim.lr=1e30"),
                       env=run_main_env())
    try:
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 3, out[-3000:]
    # the step depends on the samples: a step whose rewards are all equal has no gradient to blow up
    assert re.search(r"rayrl: program error: ProgramError: step \d+ raised FloatingPointError: non-finite "
                     r"grad_norm=nan", out), out[-3000:]
    assert "relaunching" not in out and out.count("starting fresh at step 1") == 1
    assert not events_named(tmp_path, "failure") and not events_named(tmp_path, "recovered")
    (stopped,) = events_named(tmp_path, "program_error")
    assert "not retried" in stopped["message"]
