"""Resharding: a checkpoint written by 2 actor ranks loads into 1 and into 3 ranks with identical weights,
optimizer state, LR schedule and RNG, and training goes on from it (64 rows over 3 ranks is uneven).

Real torch.distributed (gloo) processes run the actor's own code (``ActorWorker``: FSDP2 build, train_step,
save_checkpoint, load_checkpoint) without Ray, so one spawn costs a process start, not a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from rayrl.checkpoint.rng import derived_seed
from tests.support import REPO

MODEL = ["actor.model.hidden_size=32", "actor.model.num_layers=2", "actor.model.num_heads=2",
         "actor.model.intermediate_size=64"]
ROWS = 64  # the default job's rows per step (8 prompts x 8 samples); 22/21/21 over 3 ranks


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """A fixed GRPO batch: prompts, sampled responses (some ending early), advantages."""
    g = torch.Generator().manual_seed(seed)
    response_mask = torch.ones(ROWS, 8, dtype=torch.long)
    for row, length in enumerate(torch.randint(2, 9, (ROWS,), generator=g).tolist()):
        response_mask[row, length:] = 0
    return {
        "prompt_ids": torch.randint(4, 100, (ROWS, 6), generator=g),
        "prompt_mask": torch.ones(ROWS, 6, dtype=torch.long),
        "response_ids": torch.randint(4, 100, (ROWS, 8), generator=g) * response_mask,
        "response_mask": response_mask,
        "advantages": torch.randn(ROWS, generator=g),
    }


def _dump(worker, path: str, stats: dict | None = None) -> None:
    """Full (unsharded) weights and optimizer state on rank 0; each rank's LR step, RNG and loss share."""
    model_sd, optim_sd = get_state_dict(worker.model, worker.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank_state = {"lr_step": worker.scheduler.state_dict()["last_epoch"], "rng": torch.get_rng_state(),
                  "loss": None if stats is None else stats["loss"]}  # this rank's share of the loss
    torch.save(rank_state, f"{path}.rank{worker.rank}")
    if worker.rank == 0:
        torch.save({"model": model_sd, "optimizer": optim_sd}, path)


def _phase(rank: int, world_size: int, port: int, phase: str, work: str) -> None:
    """One torch.distributed group of ``world_size`` ranks: save (after a step) or load, then train a step."""
    from rayrl.config import load_config
    from rayrl.workers.actor import ActorWorker

    cfg = load_config(str(REPO / "configs/grpo_tiny.yaml"), [*MODEL, f"actor.world_size={world_size}"])
    worker = ActorWorker(cfg, rank, world_size)
    worker.setup("127.0.0.1", port)
    try:
        ckpt = os.path.join(work, "ckpt")
        if phase == "save":
            worker.train_step(_batch(0))  # non-trivial optimizer state and LR step before saving
            worker.save_checkpoint(ckpt, async_save=False)
            _refuse_missing_state(worker, ckpt, work)
        else:
            worker.load_checkpoint(ckpt, saved_world_size=2, step=1)
        _dump(worker, os.path.join(work, f"{phase}{world_size}-restored.pt"))
        stats = worker.train_step(_batch(1))
        _dump(worker, os.path.join(work, f"{phase}{world_size}-trained.pt"), stats)
    finally:
        worker.shutdown()


def _refuse_missing_state(worker, ckpt: str, work: str) -> None:
    """With the saved world size every rank must find its own extra state: a copy of the checkpoint without
    rank 1's is refused by every rank alike (before any collective), and each rank writes down what it said."""
    import torch.distributed as dist

    from rayrl.checkpoint.errors import CheckpointInvalid

    incomplete = os.path.join(work, "incomplete")
    if worker.rank == 0:
        shutil.copytree(ckpt, incomplete)
        os.remove(os.path.join(incomplete, "extra_state_rank_1.pt"))
    dist.barrier()
    try:
        worker.load_checkpoint(incomplete, saved_world_size=2, step=1)
        outcome = "loaded"
    except CheckpointInvalid as err:
        outcome = str(err)
    Path(work, f"missing.rank{worker.rank}").write_text(outcome)


def _process_main(rank: int, ports: tuple[int, int, int], work: str) -> None:
    """Three processes (imports paid once) form three groups in turn: ranks 0-1 save with 2 ranks, rank 0
    then loads alone, and all three load together. Joining the 3-rank group blocks until every process
    has arrived, i.e. until the 2-rank checkpoint is complete."""
    if rank < 2:
        _phase(rank, 2, ports[0], "save", work)
    if rank == 0:
        _phase(0, 1, ports[1], "load", work)
    _phase(rank, 3, ports[2], "load", work)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("reshard")
    mp.start_processes(_process_main, args=((_free_port(), _free_port(), _free_port()), str(work)), nprocs=3,
                       start_method="spawn", join=True)
    return work


def _load(work: Path, name: str) -> dict:
    return torch.load(work / name, weights_only=True)


def _total_loss(work: Path, name: str, world_size: int) -> float:
    return sum(_load(work, f"{name}.rank{r}")["loss"] for r in range(world_size))


def _flat(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of {"model": ..., "optimizer": {"state": ...}} under one dotted key."""
    out = {f"model.{k}": v for k, v in state["model"].items()}
    for fqn, slots in state["optimizer"]["state"].items():
        out.update({f"optimizer.{fqn}.{slot}": t for slot, t in slots.items()})
    return out


def test_a_rank_missing_its_extra_state_is_refused_by_every_rank(saved):
    for rank in (0, 1):
        said = (saved / f"missing.rank{rank}").read_text()
        assert "extra_state_rank_1.pt" in said and "actor rank 1 of the 2 saved" in said, said


@pytest.mark.parametrize("world_size", [1, 3])
def test_two_rank_checkpoint_loads_into_other_world_sizes_identically(saved, world_size):
    want, got = _load(saved, "save2-restored.pt"), _load(saved, f"load{world_size}-restored.pt")
    want_t, got_t = _flat(want), _flat(got)
    assert want_t.keys() == got_t.keys()
    assert any(k.endswith(".exp_avg_sq") for k in got_t)  # the optimizer state is really compared
    for key in want_t:
        assert torch.equal(want_t[key], got_t[key]), f"{key} differs after loading into {world_size} ranks"
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    for rank in range(world_size):  # ranks beyond the saved ones: the RNG of derived_seed(seed, role, rank, step)
        want_rank = _load(saved, f"save2-restored.pt.rank{min(rank, 1)}")
        got_rank = _load(saved, f"load{world_size}-restored.pt.rank{rank}")
        assert got_rank["lr_step"] == want_rank["lr_step"] == 1
        want_rng = want_rank["rng"] if rank < 2 else torch.Generator().manual_seed(
            derived_seed(1, "actor", rank, 1)).get_state()
        assert torch.equal(got_rank["rng"], want_rng), f"rank {rank} RNG not as the rule says"

    # training goes on: the next step matches the 2-rank one up to float summation order
    before = want_t
    want, got = _load(saved, "save2-trained.pt"), _load(saved, f"load{world_size}-trained.pt")
    assert _total_loss(saved, f"load{world_size}-trained.pt", world_size) == pytest.approx(
        _total_loss(saved, "save2-trained.pt", 2), rel=1e-4, abs=1e-6)
    want_t, got_t = _flat(want), _flat(got)
    for key in want_t:
        torch.testing.assert_close(got_t[key], want_t[key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")
    assert not torch.equal(got_t["model.lm_head.weight"], before["model.lm_head.weight"])  # it did train
