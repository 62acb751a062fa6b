"""The vLLM engine on its own: per-request seeds, the Rollouts it returns, and weight sync (one engine start)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.vllm_env.settings import VLLM_MODEL, require_vllm

require_vllm()
pytestmark = pytest.mark.vllm

from rayrl.config import load_config  # noqa: E402
from rayrl.engines.vllm import VLLMEngine, check_config, request_seed, sleeps_between_generations  # noqa: E402
from rayrl.models.forward import response_logprobs  # noqa: E402
from rayrl.models.tiny import build_tiny_model  # noqa: E402
from rayrl.workers.rollout import RolloutWorker  # noqa: E402
from rayrl.workers.weight_sync import export_handles  # noqa: E402

PROMPTS = ["ab:", "cdef:", "x:"]
N = 4
MAX_NEW = 8
BEHAVIOUR_GAP = 1e-5  # vLLM's log-probs against the actor's forward pass, same float32 weights: ~1e-6 on CPU


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, [*VLLM_MODEL, f"rollout.max_new_tokens={MAX_NEW}"])


@pytest.fixture(scope="module")
def worker(cfg):
    """A RolloutWorker as Ray would host it (plain Python here), so its signal handling is real too."""
    previous = signal.getsignal(signal.SIGTERM)
    yield RolloutWorker(cfg, index=0)
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def engine(worker):
    assert isinstance(worker.engine, VLLMEngine)
    return worker.engine


def assert_greedy_matches(engine: VLLMEngine, model) -> None:
    """vLLM's greedy continuation of a prompt equals HF ``generate``'s with ``model`` (up to HF's eos)."""
    from vllm import SamplingParams

    ids = engine.tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, detokenize=False)
    got = list(engine.llm.generate([{"prompt_token_ids": ids}], greedy, use_tqdm=False)[0].outputs[0].token_ids)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=engine.pad_id)
    want = out[0, len(ids):].tolist()
    if engine.eos_id in want:  # HF stops at eos; vLLM was told to go on
        want = want[: want.index(engine.eos_id) + 1]
    assert len(want) > 1 and got[: len(want)] == want, (got, want)


def test_request_seed_is_a_pure_function_of_run_step_and_sample():
    seeds = {request_seed(run, step, i) for run in (1, 2) for step in (1, 2) for i in range(16)}
    assert len(seeds) == 2 * 2 * 16
    assert all(0 <= s < 2**63 for s in seeds)
    assert request_seed(1, 5, 3) == request_seed(1, 5, 3)


def test_check_config_names_the_key():
    bad = load_config(None, ["rollout.backend=vllm", "actor.model.hidden_size=32", "actor.model.num_heads=2"])
    with pytest.raises(ValueError, match="actor.model.hidden_size / actor.model.num_heads = 16"):
        check_config(bad)
    gpu = load_config(None, ["rollout.backend=vllm", "rollout.num_gpus_per_worker=1",
                             "rollout.tensor_parallel_size=2"])
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size"):
        check_config(gpu)


def test_sleep_only_between_generations_that_training_separates():
    """A GPU shared with others sleeps after each generation, unless rollouts run ahead of training."""
    shared = ["rollout.backend=vllm", "rollout.num_gpus_per_worker=0.5"]
    assert sleeps_between_generations(load_config(None, shared))
    assert not sleeps_between_generations(load_config(None, [*shared, "rollout.async_steps=1"]))
    assert not sleeps_between_generations(load_config(None, ["rollout.backend=vllm", "rollout.num_gpus_per_worker=1"]))
    assert not sleeps_between_generations(load_config(None, ["rollout.backend=vllm"]))  # CPU


def test_rollouts_match_the_hf_engine_layout(engine):
    r = engine.generate(PROMPTS, N, step=1, first=0)
    tok = engine.tokenizer
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    assert torch.equal(r.prompt_ids, enc["input_ids"].repeat_interleave(N, dim=0))
    assert torch.equal(r.prompt_mask, enc["attention_mask"].repeat_interleave(N, dim=0))
    assert r.response_ids.shape == (len(PROMPTS) * N, MAX_NEW)
    assert len(r.response_texts) == len(PROMPTS) * N and r.pad_id == tok.pad_token_id
    kept = r.response_ids * r.response_mask + tok.pad_token_id * (1 - r.response_mask)
    assert r.response_texts == tok.batch_decode(kept, skip_special_tokens=True)
    assert len(set(r.response_texts)) > 1  # sampled, not one greedy answer repeated


def test_same_step_same_samples_other_step_other_samples(engine):
    a, b, c = (engine.generate(PROMPTS, N, step=s, first=0) for s in (3, 3, 4))
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_stop_token_is_kept_and_ends_the_response(engine):
    """Making the 3rd token sample 0 drew the stop token: with the same seed, it stops right there."""
    first = engine.generate(PROMPTS[:1], 2, step=5, first=0)
    stop = int(first.response_ids[0, 2])
    eos = engine.eos_id
    engine.eos_id = stop
    try:
        stopped = engine.generate(PROMPTS[:1], 2, step=5, first=0)
    finally:
        engine.eos_id = eos
    assert stopped.response_ids[0, :3].tolist() == first.response_ids[0, :3].tolist()
    assert (stopped.response_ids[0, 3:] == engine.pad_id).all()
    first_stop = first.response_ids[0].tolist().index(stop)  # masks end at the first stop token
    assert stopped.response_mask[0].tolist() == [1] * (first_stop + 1) + [0] * (MAX_NEW - first_stop - 1)


def test_weight_sync_changes_outputs_to_exactly_the_new_model(worker, engine, cfg):
    """New weights, through the ipc path (rayrl.workers.weight_sync: memory files actor rank 0 shares, here
    this process's own), change the samples; greedy decoding then equals the HF model holding those weights
    (so vLLM's fused q/k/v and gate/up layouts got the right tensors); the old weights, through a plain load
    (the object-store path), bring the old samples back bit for bit."""
    m = cfg.actor.model
    size = dict(hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                intermediate_size=m.intermediate_size, vocab_size=len(engine.tokenizer))
    original = build_tiny_model(**size, seed=cfg.runner.seed)
    other = build_tiny_model(**size, seed=cfg.runner.seed + 100)
    before = engine.generate(PROMPTS, N, step=7, first=0)

    handles, shared = export_handles(other.state_dict(), receivers=1)
    worker.load_shared_weights(handles)
    shared.close()
    after = engine.generate(PROMPTS, N, step=7, first=0)
    assert not torch.equal(before.response_ids, after.response_ids)
    assert_greedy_matches(engine, other)

    engine.load_weights(original.state_dict())
    assert torch.equal(engine.generate(PROMPTS, N, step=7, first=0).response_ids, before.response_ids)


def test_behaviour_logprobs_are_the_actors_forward_up_to_the_engine_gap(engine, cfg):
    """Asked for them (rollouts ahead of training), each sampled token comes with the log-prob vLLM's sampler
    gave it: the model's distribution before temperature and top-p, which the actor's forward pass computes
    for the ratio (rayrl.models.forward), equal to it on the same weights up to the two forward passes'
    numerics (BEHAVIOUR_GAP); the tempered distribution it was drawn from would be far off. Compared where the
    actor sees what vLLM saw: a pad token the model sampled is masked out of the actor's attention (the
    response mask), so the tokens after it have other contexts there. Asking does not change the samples."""
    m = cfg.actor.model
    model = build_tiny_model(hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
                             intermediate_size=m.intermediate_size, vocab_size=len(engine.tokenizer),
                             seed=cfg.runner.seed).eval()
    engine.load_weights(model.state_dict())  # the engine's start weights, whatever ran before
    engine.temperature, engine.top_p = 0.5, 0.9
    try:
        r = engine.generate(PROMPTS, N, step=9, first=0, logprobs=True)
        plain = engine.generate(PROMPTS, N, step=9, first=0)
    finally:
        engine.temperature, engine.top_p = cfg.rollout.temperature, cfg.rollout.top_p
    assert torch.equal(r.response_ids, plain.response_ids) and plain.logprobs is None
    mask = r.response_mask.bool()
    assert r.logprobs.dtype == torch.float32 and r.logprobs.shape == r.response_ids.shape
    assert (r.logprobs[mask] < 0).all()
    same_context = mask & ((~mask).cumsum(1) == 0)  # no masked-out token before it
    assert same_context.sum() > len(PROMPTS) * N
    with torch.no_grad():
        want = response_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        hook = model.lm_head.register_forward_hook(lambda _, __, logits: logits / 0.5)  # the tempered ones
        tempered = response_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        hook.remove()
    gap = (r.logprobs - want)[same_context].abs().max().item()
    assert gap < BEHAVIOUR_GAP, gap
    assert (r.logprobs - tempered)[same_context].abs().max().item() > 100 * BEHAVIOUR_GAP


def test_preemption_notice_still_reaches_a_vllm_worker(worker, engine):
    """vLLM runs in the worker's process: it must leave the worker's SIGTERM handler (the notice) alone."""
    assert not worker.preemption_notice
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.preemption_notice


def test_pretrained_qwen2_directory_loads_and_syncs(tmp_path):
    """The actor.model.path branch, on the architecture of configs/qwen2.5_math.yaml: a small random
    Qwen2 (q/k/v biases, grouped-query attention) saved as a HF directory. vLLM loads it from disk once;
    a sync then replaces every weight: greedy decoding equals HF's with the same weights, before and after."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rayrl.models.tiny import build_tokenizer

    tok = build_tokenizer(str(tmp_path))
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    cfg = load_config(None, ["rollout.backend=vllm", f"actor.model.path={tmp_path}",
                             f"rollout.max_new_tokens={MAX_NEW}"])
    engine = VLLMEngine(cfg)
    assert_greedy_matches(engine, Qwen2ForCausalLM.from_pretrained(tmp_path).eval())
    torch.manual_seed(1)
    other = Qwen2ForCausalLM(config).eval()
    engine.load_weights(other.state_dict())
    assert_greedy_matches(engine, other)
    assert engine.generate(PROMPTS, N, step=1, first=0).response_ids.shape == (len(PROMPTS) * N, MAX_NEW)
