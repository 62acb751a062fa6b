"""Sampling seeds are a pure function of (run seed, step, first sample of the call), not of the worker: two
engines (two workers, or a worker and its replacement) draw the same chunk bit for bit, whatever each drew
before; another step or another first sample draws other noise; the process's global RNG is untouched (on
CPU; tests/gpu/smoke.py checks the CUDA generator). The engine's saved state is its seed scheme only, and an
older checkpoint's per-worker generator state loads with a warning."""

from __future__ import annotations

import hashlib
import logging

import torch

from rayrl.config import load_config
from rayrl.engines.hf import SEED_SCHEME, HFEngine, call_seed
from rayrl.engines.vllm import request_seed
from rayrl.models.forward import response_logprobs

TINY = ["actor.model.hidden_size=32", "actor.model.num_layers=1", "actor.model.num_heads=2",
        "actor.model.intermediate_size=64", "rollout.max_new_tokens=8"]
PROMPTS = ["abc", "xy"]


def _hash63(key: str, digest: str) -> int:
    raw = hashlib.sha256(key.encode()).digest() if digest == "sha256" else hashlib.blake2b(
        key.encode(), digest_size=8).digest()
    return int.from_bytes(raw[:8], "little") >> 1


def test_seeds_are_pure_functions_of_run_step_and_sample():
    """By hand: the hashes of the documented keys. No worker index in either: any worker's draw is the same."""
    assert call_seed(1, 3, 8) == _hash63("rayrl-rng-v1:1:generate:8:3", "sha256")
    assert request_seed(1, 3, 8) == _hash63("rayrl-vllm-v2:1:3:8", "blake2b")
    seeds = {call_seed(run, step, first) for run in (1, 2) for step in (1, 2) for first in (0, 4, 8)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert len({request_seed(run, step, i) for run in (1, 2) for step in (1, 2) for i in range(16)}) == 64


def test_any_engine_draws_the_same_chunk_whatever_it_drew_before(caplog) -> None:
    cfg = load_config(None, TINY)
    a, b = HFEngine(cfg), HFEngine(cfg)
    torch.manual_seed(7)
    global_before = torch.get_rng_state()
    chunk = a.generate(PROMPTS, 4, 3, 8)
    a.generate(PROMPTS, 4, 4, 0)  # b did not draw this one
    assert torch.equal(torch.get_rng_state(), global_before)
    assert torch.equal(b.generate(PROMPTS, 4, 3, 8).response_ids, chunk.response_ids)  # a replacement: the same
    assert torch.equal(a.generate(PROMPTS, 4, 3, 8).response_ids, chunk.response_ids)  # and again later
    assert not torch.equal(a.generate(PROMPTS, 4, 4, 8).response_ids, chunk.response_ids)  # another step
    assert not torch.equal(a.generate(PROMPTS, 4, 3, 0).response_ids, chunk.response_ids)  # another chunk

    assert a.state_dict() == {"backend": "hf", "seed_scheme": SEED_SCHEME}
    with caplog.at_level(logging.WARNING, logger="rayrl.engines.hf"):
        b.load_state_dict(a.state_dict())
        assert not caplog.records
        b.load_state_dict({"rng": torch.Generator().get_state()})  # an older checkpoint's per-worker stream
    (warned,) = caplog.records
    assert "an older rayrl (per-worker generator streams)" in warned.getMessage()


def test_behaviour_logprobs_are_the_actors_forward_and_leave_the_samples_alone() -> None:
    """Asked for them (rollouts ahead of training), the engine returns the log-probs of the actor's forward
    pass on its own weights, at any sampling temperature; asking does not change what is sampled."""
    engine = HFEngine(load_config(None, [*TINY, "rollout.temperature=0.5"]))
    r = engine.generate(PROMPTS, 4, 1, 0, logprobs=True)
    assert torch.equal(r.response_ids, engine.generate(PROMPTS, 4, 1, 0).response_ids)
    want = response_logprobs(engine.model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    assert torch.equal(r.logprobs, want)
