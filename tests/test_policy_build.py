"""The sharded policy is built on the meta device, sharded, then filled from rank 0's weights: it must equal
the model every process builds by itself (weights, buffers, tied embeddings), and leave the RNG alone."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayrl.config import load_config
from rayrl.models.loading import load_model_and_tokenizer

WORLD = 2


def _rank(rank: int, port: int, failures: "mp.Queue") -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from rayrl.workers.policy import build_sharded_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model_cfg = load_config(None, ["actor.model.hidden_size=32", "actor.model.num_layers=2",
                                       "actor.model.num_heads=2", "actor.model.intermediate_size=64"]).actor.model
        rng = torch.get_rng_state()
        sharded, _ = build_sharded_policy(model_cfg, 5, WORLD, torch.device("cpu"))
        full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
        reference, _ = load_model_and_tokenizer(model_cfg, 5)
        problems = [k for k, v in reference.state_dict().items() if not torch.equal(full[k], v)]
        problems += [n for (n, a), (_, b) in zip(sharded.named_buffers(), reference.named_buffers())
                     if not torch.equal(a, b)]
        if sharded.lm_head.weight is not sharded.model.embed_tokens.weight:
            problems.append("tied embeddings untied")
        ids = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(0))
        if not torch.equal(sharded(input_ids=ids).logits, reference(input_ids=ids).logits):
            problems.append("logits")
        if not torch.equal(rng, torch.get_rng_state()):
            problems.append("global RNG moved")
        if problems:
            failures.put(f"rank {rank}: {problems}")
    finally:
        dist.destroy_process_group()


def test_meta_build_equals_the_full_model_on_every_rank() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    mp.start_processes(_rank, args=(port, failures), nprocs=WORLD, start_method="spawn")
    assert failures.empty(), failures.get()
