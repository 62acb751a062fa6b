"""Bit-exact resume, the spine of rayrl: a run killed with SIGKILL after step K's checkpoint and started
again with the same command ends with the same weights and per-step rewards as an uninterrupted run."""

from __future__ import annotations

import pytest

from tests.support import (
    assert_same_weights, final_weights, kill_session, output_of, rewards, run_rayrl, spawn_rayrl,
    tracker_step, wait_until,
)

STEPS = ["runner.max_steps=6", "runner.save_interval=2"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = run_rayrl(out, *STEPS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def test_same_seed_same_result(reference_run, tmp_path):
    """Determinism: two fresh runs with the same config give bit-identical weights and metrics."""
    proc = run_rayrl(tmp_path, *STEPS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert rewards(tmp_path) == rewards(reference_run)
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference_run, 6))


@pytest.mark.parametrize("kill_after", [2, 4])
def test_sigkill_then_same_command_is_bit_exact(reference_run, tmp_path, kill_after):
    proc = spawn_rayrl(tmp_path, *STEPS, "runner.checkpoint.async_save=false")
    try:
        wait_until(lambda: (tracker_step(tmp_path) or 0) >= kill_after or proc.poll() is not None,
                   timeout=240, what=f"checkpoint of step {kill_after}")
    finally:
        kill_session(proc)
    assert tracker_step(tmp_path) >= kill_after, output_of(proc)[-3000:]
    resumed = run_rayrl(tmp_path, *STEPS, "runner.checkpoint.async_save=false")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Resumed from" in resumed.stdout
    assert rewards(tmp_path) == rewards(reference_run)  # each step once, same values
    assert_same_weights(final_weights(tmp_path, 6), final_weights(reference_run, 6))
