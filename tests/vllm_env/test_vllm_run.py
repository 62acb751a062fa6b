"""GRPO with rollout.backend=vllm through the real driver, with the rollouts one step ahead of training
(rollout.async_steps=1; the vLLM paths of the synchronous loop run as well, but for the ipc weight sync,
which test_vllm_engine.py covers, and the behaviour log-probs come from vLLM's sampler): reward rises; a
SIGKILLed vLLM rollout worker is recovered from inside the job, and the same job SIGKILLed later resumes with
the same command. The interrupted run is compared with the uninterrupted one bit for bit: weights and
per-step rewards (vLLM's CPU forward pass is deterministic and every sample has its own seed, see
rayrl/engines/vllm.py).

A run would finish before a test could kill it, so the test-only hang hook (tests/hang_hook, through
tests.support.hang_env) parks the rollout worker at the start of given steps' generation, once per run
directory: each kill lands at a known step, after a known checkpoint. With rollouts ahead, step s is
generated while step s - 1 trains, which the checkpoint of step s - 2 or before does not hold."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.vllm_env.settings import VLLM_MODEL, require_vllm

require_vllm()
pytestmark = pytest.mark.vllm

import psutil  # noqa: E402 - a vLLM dependency

import torch  # noqa: E402

from rayrl.checkpoint.format import DATA_DIR, ROLLOUTS_AHEAD_FILE, step_dir_name  # noqa: E402
from tests.support import (  # noqa: E402
    assert_same_weights, checkpoints_dir, final_weights, hang_env, kill_session, read_events, read_metrics, rewards,
    run_dir, run_rayrl, spawn_rayrl, tracker_step, wait_until,
)

STEPS = 24  # one update behind, repeat_token needs ~20 steps at this lr (12 synchronously)
RUN = [*VLLM_MODEL, "rollout.async_steps=1", "data.task=repeat_token", "data.batch_size=4", "data.num_samples=64",
       "rollout.n_samples_per_prompt=8", "rollout.max_new_tokens=8", "actor.optim.lr=1e-2",
       f"runner.max_steps={STEPS}", "runner.save_interval=3", "runner.checkpoint.async_save=false"]
TIMEOUT = 600  # vLLM start-up and Ray on 2 shared cores


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-reference")
    proc = run_rayrl(out, *RUN, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def test_reward_rises_one_update_behind(reference_run):
    values = [r for _, r in rewards(reference_run)]
    assert [s for s, _ in rewards(reference_run)] == list(range(1, STEPS + 1))
    assert sum(values[-3:]) / 3 > sum(values[:3]) / 3 + 0.3, values
    lags = [(m["step"], m["policy_lag_max"]) for m in read_metrics(reference_run)]
    assert lags == [(s, min(s - 1, 1)) for s in range(1, STEPS + 1)]


def _wait_parked(proc, out: Path, step: int) -> None:
    """Return once the run's rollout worker is parked at the start of ``step`` (the driver still alive)."""
    marker = run_dir(out) / f".test-hang-{step}"
    wait_until(lambda: marker.exists() or proc.poll() is not None, TIMEOUT, f"the hang at step {step}")
    assert proc.poll() is None, f"exited with {proc.returncode}; events: {read_events(out)[-5:]}"


def _rollout_worker_pids(session: int) -> list[int]:
    """The run's vLLM rollout workers: Ray names the process after the actor class (setproctitle)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(p.pid) == session and (p.info["cmdline"] or [""])[0].startswith("ray::RolloutWorker"):
                pids.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return pids


def test_sigkill_of_the_vllm_worker_then_of_the_job_resumes_bit_exactly(reference_run, tmp_path):
    """One run, two kills: the vLLM rollout worker parked in the generation of step 5 (launched ahead while
    step 4 trains, after the checkpoint of step 3) is recovered inside the job: a new worker is sent the
    weights steps 5 and 6 were pinned to and generates their samples again, nothing is reloaded; the whole
    job, parked in step 8's generation (after step 6's checkpoint), is resumed by the same command and takes
    step 7's samples from that checkpoint. One run instead of two keeps this stage short; each kill still has
    its own checks."""
    proc = spawn_rayrl(tmp_path, *RUN, env=hang_env("5,8"))
    try:
        _wait_parked(proc, tmp_path, 5)
        assert tracker_step(tmp_path) == 3
        pids = _rollout_worker_pids(proc.pid)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        _wait_parked(proc, tmp_path, 8)
    finally:
        kill_session(proc)
    events = read_events(tmp_path)
    failures = [e for e in events if e["event"] == "failure"]
    assert len(failures) == 1 and failures[0]["what"].startswith("rollout"), failures
    assert not [e for e in events if e["event"] == "resumed"], "a lost rollout worker reloads nothing"
    (recovered,) = [e for e in events if e["event"] == "recovered"]
    # step 5's generation and step 6's, launched ahead behind it on the lost worker; no step redone
    assert recovered["regenerated"] == [5, 6] and recovered["resumed_from"] == 4, recovered
    assert tracker_step(tmp_path) == 6

    again = run_rayrl(tmp_path, *RUN, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "global_step_6: next step 7" in again.stdout, again.stdout[-3000:]
    assert rewards(tmp_path) == rewards(reference_run)
    assert_same_weights(final_weights(tmp_path, STEPS), final_weights(reference_run, STEPS))
    (ahead,) = torch.load(checkpoints_dir(tmp_path) / step_dir_name(6) / DATA_DIR / ROLLOUTS_AHEAD_FILE,
                          weights_only=True)  # what the resume took step 7's samples from, vLLM's log-probs too
    assert (ahead["step"], ahead["version"]) == (7, 5) and ahead["rollouts"]["logprobs"].lt(0).any(), ahead
