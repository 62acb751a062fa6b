"""A scheduler's stop saves the work: SIGTERM (what Slurm, Kubernetes and most schedulers send before a kill)
to the driver, the coordinator and run_main.sh, one after the other in one job started by run_main.sh, with
runner.save_interval larger than the run so that only the SIGTERM saves exist.

- the driver: saves at the next step boundary and exits 75; run_main.sh relaunches it (a preemption) and the
  new driver resumes from that step;
- the coordinator: saves at the next step boundary and its process exits 75; Ray restarts it and it resumes;
- run_main.sh itself: forwards it to the driver, which saves and exits 75; run_main.sh exits 75 without
  relaunching. The same command later resumes from that step and ends bit-exact with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.support import (
    FAST, RECOVERY_STEPS, REPO, assert_same_weights, checkpoints_dir, descendants, env_for_tests, events_named,
    final_weights, kill_session, last_step, output_of, pid_busy_in, rewards, spawn_rayrl, uninterrupted_run,
    wait_running,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # five driver starts, three of them cold


def _run_main(tmp_path):
    cmd = ["bash", str(REPO / "run_main.sh"), f"runner.output_dir={tmp_path}", *FAST, *RECOVERY_STEPS,
           "runner.save_interval=100"]
    env = env_for_tests(RAYRL_SKIP_SETUP="1", VIRTUAL_ENV=os.path.dirname(os.path.dirname(sys.executable)))
    return spawn_rayrl(tmp_path, cmd=cmd, env=env)


def _preempted_steps(tmp_path) -> list[int]:
    return [e["step"] for e in events_named(tmp_path, "preempted")]


def test_sigterm_to_the_driver_the_coordinator_and_run_main_saves_and_resumes_bit_exact(tmp_path_factory,
                                                                                        tmp_path):
    reference = uninterrupted_run(tmp_path_factory, *RECOVERY_STEPS)
    proc = _run_main(tmp_path)
    try:
        wait_running(proc, lambda: last_step(tmp_path) >= 2, 300, "step 2")
        (driver,) = [pid for pid, cmd in descendants(proc.pid) if "-m rayrl.main" in cmd]
        os.kill(driver, signal.SIGTERM)
        wait_running(proc, lambda: events_named(tmp_path, "driver_relaunched"), 300, "the driver's relaunch")
        first = _preempted_steps(tmp_path)[0]
        wait_running(proc, lambda: last_step(tmp_path) >= first + 2, 300, f"step {first + 2}")
        os.kill(pid_busy_in(proc.pid, "ray::Coordinator"), signal.SIGTERM)
        wait_running(proc, lambda: events_named(tmp_path, "coordinator_restarted"), 300, "the coordinator's restart")
        second = _preempted_steps(tmp_path)[1]
        wait_running(proc, lambda: last_step(tmp_path) >= second + 2, 300, f"step {second + 2}")
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)
    out = output_of(proc)
    assert rc == 75, out[-3000:]
    steps = _preempted_steps(tmp_path)
    assert len(steps) == 3 and steps[0] < steps[1] < steps[2] < 20, steps
    assert "relaunching (1/3)" in out and "relaunching (2/3)" not in out, out[-3000:]  # not after its own stop
    saved = sorted(int(p.name.split("_")[-1]) for p in checkpoints_dir(tmp_path).glob("global_step_*"))
    assert saved == steps, saved  # save_interval=100: only the SIGTERM saves
    assert [e["step"] for e in events_named(tmp_path, "resumed")] == steps[:2]

    again = _run_main(tmp_path)  # the same command, later
    try:
        rc = again.wait(timeout=300)
    finally:
        kill_session(again)
    assert rc == 0, output_of(again)[-3000:]
    assert [e["step"] for e in events_named(tmp_path, "resumed")] == steps
    assert rewards(tmp_path) == rewards(reference)  # each step once, the same values
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
