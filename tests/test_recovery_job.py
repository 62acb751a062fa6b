"""Losing the processes that drive the run, in one job started by run_main.sh from another run's step 4
(runner.resume_dir, resume_mode=disable): SIGKILL of the coordinator (Ray restarts it; it resumes from this
run's own latest checkpoint, not from resume_dir and without archiving), then SIGKILL of the driver
(run_main.sh relaunches it with resume_mode=auto; again this run's own checkpoint). The job ends with exit 0
and the weights of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.support import (
    EXPERIMENT, FAST, RECOVERY_STEPS, REPO, assert_same_weights, descendants, env_for_tests, events_named,
    final_weights, kill_session, output_of, pid_busy_in, process_table, recovery_times, rewards, run_dir,
    session_processes, spawn_rayrl, tracker_step, uninterrupted_run, wait_running,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, *RECOVERY_STEPS)


def test_sigkill_of_the_coordinator_then_of_the_driver(reference, tmp_path):
    start = reference / EXPERIMENT / "checkpoints" / "global_step_4"
    cmd = ["bash", str(REPO / "run_main.sh"), f"runner.output_dir={tmp_path}", *FAST, *RECOVERY_STEPS,
           f"runner.resume_dir={start}", "runner.resume_mode=disable"]
    env = env_for_tests(RAYRL_SKIP_SETUP="1", VIRTUAL_ENV=os.path.dirname(os.path.dirname(sys.executable)))
    proc = spawn_rayrl(tmp_path, cmd=cmd, env=env)
    killed_at = []
    try:
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 8, 300, "this run's checkpoint of step 8")
        os.kill(pid_busy_in(proc.pid, "ray::Coordinator"), signal.SIGKILL)
        killed_at.append(time.time())
        wait_running(proc, lambda: events_named(tmp_path, "recovered") and (tracker_step(tmp_path) or 0) >= 12,
                     300, "the coordinator's recovery and the checkpoint of step 12")
        (driver,) = [pid for pid, cmdline in descendants(proc.pid) if "-m rayrl.main" in cmdline]
        os.kill(driver, signal.SIGKILL)
        killed_at.append(time.time())
        wait_running(proc, lambda: len(events_named(tmp_path, "recovered")) == 2, 300, "the driver's recovery")
        ours = set(session_processes(proc.pid))  # orphans of the dead driver stay in the session
        agents = [pid for pid, (_, cmd) in process_table().items() if pid in ours and "DashboardAgent" in cmd]
        assert len(agents) == 1, "the killed driver's Ray daemons outlived it"
        rc = proc.wait(timeout=300)
    finally:
        kill_session(proc)  # Ray's agents of the killed driver's instance linger as orphans
    out = output_of(proc)
    assert rc == 0, out[-3000:]
    assert "driver exited with 137; relaunching (1/3) with runner.resume_mode=auto" in out
    (restarted,) = events_named(tmp_path, "coordinator_restarted")
    (relaunched,) = events_named(tmp_path, "driver_relaunched")
    assert "killed by signal 9" in relaunched["message"], relaunched
    resumed = [e["step"] for e in events_named(tmp_path, "resumed")]
    assert len(resumed) == 3 and resumed[0] == 4 and resumed[1] >= 8 and resumed[2] >= 12, resumed
    assert [e["what"] for e in events_named(tmp_path, "recovered")] == ["coordinator", "driver"]
    kept = r"global_step_\d+|latest_checkpointed_iteration\.txt"
    aside = [p.name for p in (run_dir(tmp_path) / "checkpoints").iterdir() if not re.fullmatch(kept, p.name)]
    assert not aside, aside  # nothing archived (run_<k>) or superseded (moved aside)
    assert rewards(tmp_path) == rewards(reference)[4:]  # steps 5..20, each once, same values
    assert_same_weights(final_weights(tmp_path, 20), final_weights(reference, 20))
    print("\n".join(["", *recovery_times(tmp_path, killed_at)]))
