"""The hf engine owns its sampling generators: one stream per worker that advances every step, is saved and
restored, and leaves the process's global RNG alone (on CPU; tests/gpu/run.sh checks the CUDA generator)."""

from __future__ import annotations

import torch

from rayrl.config import load_config
from rayrl.engines.hf import HFEngine, owned_rng
from rayrl.models.forward import response_logprobs

TINY = ["actor.model.hidden_size=32", "actor.model.num_layers=1", "actor.model.num_heads=2",
        "actor.model.intermediate_size=64", "rollout.max_new_tokens=8"]
PROMPTS = ["abc", "xy"]


def test_owned_rng_advances_the_owned_state_and_restores_the_global_one() -> None:
    torch.manual_seed(7)
    global_before = torch.get_rng_state()
    owned = torch.Generator().manual_seed(3)
    with owned_rng([owned]):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), global_before)
    with owned_rng([owned]):
        second = torch.rand(4)
    assert not torch.equal(first, second)  # the owned stream moved on: new noise each call
    assert torch.equal(torch.cat([first, second]), torch.rand(8, generator=torch.Generator().manual_seed(3)))


def test_engine_streams_differ_per_worker_advance_per_step_and_resume() -> None:
    cfg = load_config(None, TINY)
    a, b = HFEngine(cfg, 0), HFEngine(cfg, 1)
    assert [g.device.type for g in a.generators.values()] == ["cpu"]  # every device sampling touches
    global_before = torch.get_rng_state()
    saved = a.state_dict()
    step1, step2 = a.generate(PROMPTS, 4, 1), a.generate(PROMPTS, 4, 2)
    other = b.generate(PROMPTS, 4, 1)
    assert torch.equal(torch.get_rng_state(), global_before)
    assert not torch.equal(step1.response_ids, step2.response_ids)
    assert not torch.equal(step1.response_ids, other.response_ids)
    resumed = HFEngine(cfg, 0)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.generate(PROMPTS, 4, 1).response_ids, step1.response_ids)
    assert torch.equal(resumed.generate(PROMPTS, 4, 2).response_ids, step2.response_ids)


def test_behaviour_logprobs_are_the_actors_forward_and_leave_the_samples_alone() -> None:
    """Asked for them (rollouts ahead of training), the engine returns the log-probs of the actor's forward
    pass on its own weights, at any sampling temperature; asking does not change what is sampled."""
    cfg = load_config(None, [*TINY, "rollout.temperature=0.5"])
    engine, plain = HFEngine(cfg, 0), HFEngine(cfg, 0)
    r = engine.generate(PROMPTS, 4, 1, logprobs=True)
    assert torch.equal(r.response_ids, plain.generate(PROMPTS, 4, 1).response_ids)
    want = response_logprobs(engine.model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    assert torch.equal(r.logprobs, want)
