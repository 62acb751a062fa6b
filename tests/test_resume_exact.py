"""Bit-exact resume, the spine of rayrl: a run killed with SIGKILL after step K's checkpoint and started
again with the same command ends with the same weights and per-step rewards as an uninterrupted run."""

from __future__ import annotations

from rayrl.data.ledger import audit
from tests.support import (
    RESUME_STEPS, assert_same_weights, events_named, final_weights, kill_session, ledger, output_of, read_metrics,
    rewards, run_rayrl, spawn_rayrl, tracker_step, uninterrupted_run, wait_until,
)

SYNC = "runner.checkpoint.async_save=false"


def test_same_seed_same_result(tmp_path_factory, tmp_path):
    """Determinism: two fresh runs with the same config give bit-identical weights and metrics."""
    reference = uninterrupted_run(tmp_path_factory, *RESUME_STEPS)
    proc = run_rayrl(tmp_path, *RESUME_STEPS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference, 6))


def test_sigkill_then_same_command_is_bit_exact(tmp_path_factory, tmp_path):
    """The whole machine lost twice (the driver's session, its private Ray included, SIGKILLed): after the
    checkpoint of step 2, then, started again with the same command, after the one of step 4. The third
    start finishes the run, bit-exact with the uninterrupted one."""
    reference = uninterrupted_run(tmp_path_factory, *RESUME_STEPS)
    for kill_after in (2, 4):
        proc = spawn_rayrl(tmp_path, *RESUME_STEPS, SYNC)
        try:
            wait_until(lambda: (tracker_step(tmp_path) or 0) >= kill_after or proc.poll() is not None,
                       timeout=240, what=f"checkpoint of step {kill_after}")
        finally:
            kill_session(proc)
        out = output_of(proc)
        assert tracker_step(tmp_path) >= kill_after, out[-3000:]
        resumed = [e["step"] for e in events_named(tmp_path, "resumed")]
        assert resumed == ([] if kill_after == 2 else [2]), out[-3000:]
    resumed = run_rayrl(tmp_path, *RESUME_STEPS, SYNC)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Resumed from" in resumed.stdout
    assert [e["step"] for e in events_named(tmp_path, "resumed")] == [2, 4]
    assert rewards(tmp_path) == rewards(reference)  # each step once, same values
    assert audit(read_metrics(tmp_path), dataset_size=16, batch_size=4) == []  # RESUME_STEPS: epochs of 4 steps
    assert ledger(tmp_path) == ledger(reference)  # the same prompts at every step
    assert {(m["actor_world_size"], m["rollout_workers"]) for m in read_metrics(tmp_path)} == {(2, 1)}
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference, 6))
