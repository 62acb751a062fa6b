"""Asynchronous saves: one rank's DCP writer in isolation, then SIGKILL landing while shards are written.

The rank-level checks run in a fresh process (its own torch.distributed group and a clean peak-RSS counter):
what is written is the state at save time even though training changes it right after staging, staging takes at
most one extra copy of the rank's state (and reuses it), a background failure comes back from ``wait``, an
abandoned save (what recovery does with one the manager dropped) is forgotten with its error, and the digests
handed back describe the files on disk. The end-to-end test kills a real run twice while a save is being written
(the whole job, then one actor rank) and checks each resume starts from the previous step and the run still
ends bit-exactly like an uninterrupted one.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.support import (
    assert_same_weights, events_named, final_weights, kill_session, output_of, rewards, run_dir, run_rayrl,
    session_processes, spawn_rayrl, tracker_step, wait_until,
)

# A model whose shards take a few hundred ms to write here (about 170 MB of state over two ranks).
BIG = ["actor.model.hidden_size=768", "actor.model.intermediate_size=2048", "actor.model.num_heads=4"]
STEPS = ["runner.max_steps=4", "runner.save_interval=1"]


# --------------------------------------------------------------------------- one rank, in its own process

def _rss_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


def _rank_probe(tmp: str) -> dict:
    """Runs in a fresh process: a one-rank FSDP2 policy after one optimizer step, saved asynchronously."""
    import gc

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from rayrl.checkpoint.manifest import file_digest
    from rayrl.checkpoint.sharded import ShardedCheckpointIO
    from rayrl.config import ModelConfig, OptimConfig
    from rayrl.workers.policy import build_optimizer, build_sharded_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
    model, _ = build_sharded_policy(ModelConfig(hidden_size=512, num_layers=4, num_heads=4, intermediate_size=1024),
                                    seed=1, world_size=1, device=torch.device("cpu"))
    optimizer = build_optimizer(model, OptimConfig())
    model(torch.randint(4, 90, (1, 8))).logits.mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    def state() -> dict:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    def tensors(tree):
        if isinstance(tree, dict):
            for v in tree.values():
                yield from tensors(v)
        elif isinstance(tree, torch.Tensor):
            yield local(tree)

    state_bytes = sum(t.numel() * t.element_size() for t in tensors(state()))
    io = ShardedCheckpointIO(0, dist.new_group(backend="gloo"))
    result: dict = {"state_bytes": state_bytes}

    gc.collect()
    before = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS counter (VmHWM) from here
    for i in range(3):
        io.save(f"{tmp}/mem{i}", state(), async_save=True)
        io.wait()
    result["peak_rise_bytes"] = (_rss_kb("VmHWM") - before) * 1024

    key = "model.layers.0.mlp.up_proj.weight"
    param = dict(model.named_parameters())[key]
    at_save = local(param).detach().clone()
    io.save(f"{tmp}/snap", state(), async_save=True)  # returns before the state is even copied out
    io.wait_staged()  # what the actor does before its next optimizer step
    with torch.no_grad():
        local(param).add_(1.0)  # training goes on while the shards are written
    digests = io.wait()
    result["digests_match_files"] = digests == {n: file_digest(f"{tmp}/snap/{n}") for n in digests}
    result["digest_names"] = sorted(digests)
    read_back = {"model": {k: torch.empty_like(local(v)) for k, v in get_state_dict(model, optimizer)[0].items()}}
    dcp.load(read_back, checkpoint_id=f"{tmp}/snap", no_dist=True)
    result["snapshot_equal_at_save"] = torch.equal(read_back["model"][key], at_save)
    result["snapshot_equal_after_change"] = torch.equal(read_back["model"][key], local(param).detach())

    Path(f"{tmp}/a_file").write_text("not a directory")
    io.save(f"{tmp}/a_file/ckpt", state(), async_save=True)  # the writer's mkdir fails in the background
    try:
        io.wait()
        result["failure"] = None
    except Exception as err:  # noqa: BLE001 -- the point is what comes back
        result["failure"] = f"{type(err).__name__}: {err}"
    result["wait_after_failure"] = io.wait()
    io.save(f"{tmp}/a_file/again", state(), async_save=True)  # fails too; a recovery abandons it
    try:
        io.abandon()
        result["abandon_error"] = None
    except Exception as err:  # noqa: BLE001
        result["abandon_error"] = f"{type(err).__name__}: {err}"
    result["wait_after_abandon"] = io.wait()
    io.save(f"{tmp}/after", state(), async_save=True)
    result["after_failure_names"] = sorted(io.wait())
    io.close()
    dist.destroy_process_group()
    return result


@pytest.fixture(scope="module")
def rank_probe():
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_rank_probe, tmp).result(timeout=600)


def test_staging_takes_at_most_one_extra_copy_of_the_state(rank_probe):
    rise, state = rank_probe["peak_rise_bytes"], rank_probe["state_bytes"]
    assert state > 100e6  # big enough that a second copy could not hide in the noise
    assert rise <= 1.25 * state, f"peak RSS rose by {rise / 1e6:.0f} MB for {state / 1e6:.0f} MB of state"


def test_written_state_is_the_state_at_save_time(rank_probe):
    assert rank_probe["snapshot_equal_at_save"]
    assert not rank_probe["snapshot_equal_after_change"]


def test_wait_returns_digests_of_the_written_files(rank_probe):
    assert rank_probe["digest_names"] == [".metadata", "__0_0.distcp"]
    assert rank_probe["digests_match_files"]


def test_background_failure_comes_back_from_wait_once(rank_probe):
    assert rank_probe["failure"] is not None and "a_file" in rank_probe["failure"], rank_probe["failure"]
    assert rank_probe["wait_after_failure"] is None


def test_an_abandoned_save_is_forgotten_with_its_error(rank_probe):
    """What recovery does to a kept actor rank's save in flight: wait for it, drop it and its error."""
    assert rank_probe["abandon_error"] is None and rank_probe["wait_after_abandon"] is None
    assert rank_probe["after_failure_names"] == [".metadata", "__0_0.distcp"]


# --------------------------------------------------------------------------- SIGKILL while writing

def _wait_writing(proc, out: Path, step: int) -> Path | None:
    """Wait until ``step``'s actor shards are being written; its temp dir, or None if the run ended first.
    Polls slowly until the previous step's checkpoint is committed (or this step's save has begun), then
    every 2 ms: the window is short."""
    started = lambda: any((run_dir(out) / "checkpoints").glob(f".tmp-global_step_{step}-*"))  # noqa: E731
    wait_until(lambda: (tracker_step(out) or 0) >= step - 1 or started() or proc.poll() is not None, 600,
               f"the checkpoint of step {step - 1}")
    return wait_until(lambda: _writing(out, step) or proc.poll() is not None, 600, f"step {step}'s save",
                      interval=0.002) if proc.poll() is None else None


def _writing(out: Path, step: int) -> Path | None:
    """The temp dir of ``step`` while its actor shards are being written (some there, no .metadata yet)."""
    root = run_dir(out) / "checkpoints"
    for temp in root.glob(f".tmp-global_step_{step}-*"):
        actor = temp / "actor"
        if any(actor.glob("*.distcp")) and not (actor / ".metadata").exists():
            return temp
    return None


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = run_rayrl(out, *BIG, *STEPS, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


@pytest.mark.slow
def test_sigkill_while_a_save_is_written_resumes_from_the_previous_step_bit_exact(reference_run, tmp_path):
    # Trial 1: every process of the job (driver, Ray, coordinator, workers) while step 2's shards are written.
    proc = spawn_rayrl(tmp_path, *BIG, *STEPS)
    try:
        temp = _wait_writing(proc, tmp_path, 2)
    finally:
        kill_session(proc)
    assert isinstance(temp, Path), output_of(proc)[-3000:]
    assert not (temp / "actor" / ".metadata").exists()  # the kill landed before the shards were complete
    assert tracker_step(tmp_path) == 1
    assert sorted(p.name for p in (run_dir(tmp_path) / "checkpoints").glob("global_step_*")) == ["global_step_1"]

    # Trial 2: the same command resumes; one actor rank is killed while step 3's shards are written; the job
    # recovers by itself from the step before.
    proc = spawn_rayrl(tmp_path, *BIG, *STEPS)
    try:
        temp = _wait_writing(proc, tmp_path, 3)
        assert isinstance(temp, Path), output_of(proc)[-3000:]
        os.kill(session_processes(proc.pid, "ray::ActorWorker")[0], signal.SIGKILL)
        assert not (temp / "actor" / ".metadata").exists()  # killed before the shards were complete
        wait_until(lambda: not temp.exists() or proc.poll() is not None, 300, "the dropped save's clean-up")
        proc.wait(timeout=600)
    finally:
        kill_session(proc)
    output = output_of(proc)
    assert proc.returncode == 0, output[-3000:]
    assert re.search(r"Resumed from \S*global_step_1: next step 2", output), output[-3000:]
    assert [e["step"] for e in events_named(tmp_path, "resumed")] == [1, 2]
    assert len(events_named(tmp_path, "failure")) == 1
    assert rewards(tmp_path) == rewards(reference_run)
    assert_same_weights(final_weights(tmp_path, 4), final_weights(reference_run, 4))
