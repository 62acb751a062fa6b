"""One writer per run directory: a second job started on a directory a live job writes exits 2 naming the
holder and touches nothing; the live job goes on and its checkpoints stay whole."""

from __future__ import annotations

import threading
import time

import pytest

from rayrl.checkpoint.manifest import verify_checkpoint
from rayrl.config import ConfigError
from rayrl.run_lock import RunLock
from tests.support import (
    checkpoints_dir, events_named, kill_session, last_step, rayrl_stderr_lines, run_dir, run_rayrl_split,
    spawn_rayrl, tracker_step, wait_running,
)


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"runner.output_dir: the run directory .* is in use by another rayrl "
                                          r"run \(pid \d+ on host .*, since .*\)"):
        RunLock(tmp_path).acquire(wait_s=0.5)  # flock: a second open of the file conflicts, even in-process
    assert time.monotonic() - t0 >= 0.5
    threading.Timer(0.5, first.release).start()
    second = RunLock(tmp_path)
    assert second.acquire(wait_s=30)  # taken as soon as the holder lets go
    second.release()


@pytest.mark.slow
def test_a_second_job_on_a_live_run_directory_exits_2_and_the_first_goes_on(tmp_path):
    first = spawn_rayrl(tmp_path, "runner.max_steps=100000", "runner.save_interval=2")
    try:
        wait_running(first, lambda: (tracker_step(tmp_path) or 0) >= 2, 300, "the first job's checkpoint of step 2")
        second = run_rayrl_split(tmp_path, "runner.max_steps=100000", "runner.save_interval=2")
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = rayrl_stderr_lines(second.stderr)
        assert line.startswith(f"rayrl: config error: runner.output_dir: the run directory {run_dir(tmp_path)} "
                               "is in use by another rayrl run (pid "), line
        after = last_step(tmp_path)
        wait_running(first, lambda: last_step(tmp_path) > after + 2, 120, "the first job's next steps")
    finally:
        kill_session(first)
    assert len(events_named(tmp_path, "fresh_start")) == 1 and not events_named(tmp_path, "resumed")
    steps = sorted(checkpoints_dir(tmp_path).glob("global_step_*"))
    assert steps
    for step in steps:  # every step the first job committed is whole: the second one removed nothing
        verify_checkpoint(step)
