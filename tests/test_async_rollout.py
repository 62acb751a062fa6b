"""Rollouts ahead of training (rollout.async_steps): the config rules, the checkpoint of what is ahead, what a
lost rollout worker's replacement is sent (by hand), and one end-to-end scenario: an async_steps=1 run that
loses a rollout worker mid-generation (its samples regenerated in the job, training going on) and an actor
rank mid-training (recovered in-job from memory), and is SIGKILLed whole mid-save and mid-generation and
started again with the same command each time, ends bit-identical to an uninterrupted async_steps=1 run."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from rayrl.checkpoint.format import DATA_DIR, ROLLOUTS_AHEAD_FILE, step_dir_name
from rayrl.config import ConfigError, load_config
from rayrl.data.ledger import audit
from rayrl.data.loader import BatchStream
from rayrl.engines import Rollouts
from rayrl.participants import DataPart
from rayrl.pipeline import Ahead, RolloutPipeline
from rayrl.regenerate import GENERATE, LOAD, reissue_calls
from tests.support import (
    assert_same_weights, checkpoints_dir, events_named, final_weights, kill_session, ledger, output_of, pid_busy_in,
    read_metrics, rewards, run_rayrl, spawn_rayrl, tracker_step, uninterrupted_run, wait_running,
)

STEPS = 10
ASYNC = ("rollout.async_steps=1", f"runner.max_steps={STEPS}", "runner.save_interval=2", "data.num_samples=24",
         "runner.checkpoint.async_save=false", "runner.checkpoint.memory_replicas=1")


def test_async_steps_needs_engines_of_their_own_either_backend():
    with pytest.raises(ConfigError, match="rollout.async_steps: needs runner.placement=split"):
        load_config(None, ["rollout.async_steps=1", "runner.placement=colocated"])
    with pytest.raises(ConfigError, match="rollout.async_steps"):
        load_config(None, ["rollout.async_steps=-1"])
    for backend in ("hf", "vllm"):  # both give the behaviour log-probs
        assert load_config(None, ["rollout.async_steps=1", f"rollout.backend={backend}"]).rollout.async_steps == 1


def _rollouts(rows: int, width: int) -> Rollouts:
    ids = torch.arange(rows * width).view(rows, width)
    return Rollouts(ids, torch.ones_like(ids), ids + 1, torch.ones_like(ids), [f"r{i}" for i in range(rows)], 0,
                    scores=[{"reward": float(i)} for i in range(rows)], logprobs=-torch.rand(rows, width), gen_s=0.5)


def test_checkpoint_holds_the_rollouts_ahead_with_the_loader_position(tmp_path):
    """The data participant writes the stream's position and the finished rollouts of later steps side by
    side; loading both gives the same stream (the next batch) and the same rollouts, version and prompts.
    With nothing ahead (synchronous) no rollouts file is written and the buffer loads empty."""
    cfg = load_config(None, ["rollout.async_steps=1"])
    dataset = [{"prompt": f"p{i}", "answer": str(i)} for i in range(12)]
    saved = RolloutPipeline(None, cfg, BatchStream(dataset, 3, seed=5))
    items, epoch, indices = saved.stream.next()
    saved.ahead[4] = Ahead(4, items, epoch, indices, version=2, rollouts=_rollouts(6, 5), wait_weights_s=0.25)
    DataPart(saved, {}).save(str(tmp_path / "a"), async_save=False)
    assert (tmp_path / "a" / ROLLOUTS_AHEAD_FILE).is_file()
    loaded = RolloutPipeline(None, cfg, BatchStream(dataset, 3, seed=0))
    DataPart(loaded, {}).load(str(tmp_path / "a"))
    assert loaded.stream.next() == saved.stream.next()
    (got,) = loaded.ahead.values()
    assert (got.step, got.items, got.epoch, got.indices, got.version, got.wait_weights_s) == (
        4, items, epoch, indices, 2, 0.25)
    for name in ("prompt_ids", "response_ids", "logprobs"):
        assert torch.equal(getattr(got.rollouts, name), getattr(saved.ahead[4].rollouts, name))
    assert got.rollouts.scores == saved.ahead[4].rollouts.scores and loaded.consumed_samples == 3

    saved.ahead.clear()
    DataPart(saved, {}).save(str(tmp_path / "b"), async_save=False)
    assert not (tmp_path / "b" / ROLLOUTS_AHEAD_FILE).exists()
    DataPart(loaded, {}).load(str(tmp_path / "b"))
    assert loaded.ahead == {}


def test_rollouts_still_generating_cannot_be_saved():
    cfg = load_config(None, ["rollout.async_steps=1"])
    pipeline = RolloutPipeline(None, cfg, BatchStream([{"prompt": "p"}] * 4, 2, seed=0))
    pipeline.ahead[2] = Ahead(2, [], 0, [], 0)
    with pytest.raises(RuntimeError, match=r"steps \[2\] are still being generated"):
        pipeline.state_dict()


def test_a_replacement_is_sent_the_pinned_weights_before_each_lost_chunk_and_the_current_ones_last():
    """(step, version) of each step still generating, in step order; a new engine holds version 0."""
    assert reissue_calls([(1, 0), (2, 0)], current=0) == [(GENERATE, 1), (GENERATE, 2)]  # the initial policy
    assert reissue_calls([(5, 3), (6, 4)], current=4) == [(LOAD, 3), (GENERATE, 5), (LOAD, 4), (GENERATE, 6)]
    assert reissue_calls([(5, 3)], current=4) == [(LOAD, 3), (GENERATE, 5), (LOAD, 4)]  # step 4 synced since
    assert reissue_calls([(6, 4), (5, 3)], current=4)[:2] == [(LOAD, 3), (GENERATE, 5)]  # oldest first
    assert reissue_calls([(2, 0), (3, 1)], current=2) == [(GENERATE, 2), (LOAD, 1), (GENERATE, 3), (LOAD, 2)]
    assert reissue_calls([(7, 6)], current=6) == [(LOAD, 6), (GENERATE, 7)]  # synchronous: the current weights
    assert reissue_calls([], current=6) == [(LOAD, 6)] and reissue_calls([], current=0) == []


@pytest.mark.slow
def test_async_run_killed_and_recovered_is_bit_exact(tmp_path_factory, tmp_path):
    """Start 1: after the checkpoint of step 2, a rollout worker is SIGKILLed mid-generation (generating ahead
    while a step trains): a new process takes its place in the job, is sent the weights each lost generation was
    pinned to and regenerates those chunks; nothing is reloaded and no step is redone; then the whole session is
    SIGKILLed while an actor rank writes the next checkpoint. Start 2 (same command) resumes; an actor rank is
    SIGKILLed mid-training (the actor group alone is replaced; the rollouts ahead come back from the
    checkpoint), then the whole session as soon as a generation runs. Start 3 finishes. Weights and per-step
    rewards equal the uninterrupted run's bit for bit; each step's samples were made by the policy one update
    behind (lag 1 from step 2 on); the sample ledger shows every prompt used once, step by step the same as the
    uninterrupted run's (10 steps of 4 prompts, epochs of 6 batches: the buffer ahead crosses an epoch
    boundary); each checkpoint holds the finished rollouts of the step after it, made by the weights of the step
    before it."""
    reference = uninterrupted_run(tmp_path_factory, *ASYNC)
    proc = spawn_rayrl(tmp_path, *ASYNC)
    try:
        wait_running(proc, lambda: (tracker_step(tmp_path) or 0) >= 2, 240, "checkpoint of step 2")
        os.kill(pid_busy_in(proc.pid, "ray::RolloutWorker.generate", timeout=60), signal.SIGKILL)
        wait_running(proc, lambda: events_named(tmp_path, "recovered"), 240, "the in-job recovery")
        os.kill(pid_busy_in(proc.pid, "ray::ActorWorker.save_checkpoint", timeout=120), signal.SIGKILL)
    finally:  # the rest of the session too, while that rank's shard is half written
        kill_session(proc)
    (failure,) = events_named(tmp_path, "failure")
    assert failure["what"] == "rollout[0]" and failure["replaced"] == ["rollout"] and failure["in_job"], failure
    assert failure["counted"] and failure["restarts"] == 1, failure
    (recovered,) = events_named(tmp_path, "recovered")
    assert recovered["replaced_by"] == {"rollout": "new process"} and recovered["source"] == "memory", recovered
    assert recovered["resumed_from"] == recovered["step"] - 1 >= 2, recovered  # no rewind
    assert recovered["regenerated"] and recovered["regenerated"][0] == recovered["step"], recovered
    assert not events_named(tmp_path, "resumed"), "nothing was reloaded"
    before = [m["step"] for m in read_metrics(tmp_path) if m["time"] < failure["time"]]
    assert before == list(range(1, recovered["step"])), before  # every step once, none redone
    assert (tracker_step(tmp_path) or 0) < STEPS, output_of(proc)[-3000:]

    resumes = len(events_named(tmp_path, "resumed"))
    proc = spawn_rayrl(tmp_path, *ASYNC)
    try:
        wait_running(proc, lambda: len(events_named(tmp_path, "resumed")) > resumes, 240, "the resume")
        os.kill(pid_busy_in(proc.pid, "ray::ActorWorker.train_step", timeout=120), signal.SIGKILL)
        wait_running(proc, lambda: len(events_named(tmp_path, "recovered")) > 1, 240, "the second in-job recovery")
        os.kill(pid_busy_in(proc.pid, "ray::RolloutWorker.generate", timeout=120), signal.SIGKILL)
    finally:
        kill_session(proc)
    actor_lost = events_named(tmp_path, "failure")[-1]
    assert actor_lost["what"].startswith("actor[") and actor_lost["replaced"] == ["actor"], actor_lost
    assert (tracker_step(tmp_path) or 0) < STEPS, output_of(proc)[-3000:]

    final = run_rayrl(tmp_path, *ASYNC, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:]
    assert len(events_named(tmp_path, "resumed")) >= 3, final.stdout[-3000:]  # the actor's in-job, starts 2, 3
    assert rewards(tmp_path) == rewards(reference)
    assert_same_weights(final_weights(tmp_path, STEPS), final_weights(reference, STEPS))
    metrics = read_metrics(tmp_path)
    assert audit(metrics, 24, 4) == [] and ledger(tmp_path) == ledger(reference)  # every prompt once
    assert [(m["step"], m["policy_lag_max"]) for m in metrics] == [(s, min(s - 1, 1)) for s in range(1, STEPS + 1)]
    for step in range(2, STEPS, 2):
        (ahead,) = torch.load(checkpoints_dir(tmp_path) / step_dir_name(step) / DATA_DIR / ROLLOUTS_AHEAD_FILE,
                              weights_only=True)
        assert (ahead["step"], ahead["version"]) == (step + 1, step - 1), ahead
