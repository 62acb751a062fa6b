"""Generation with transformers ``generate``, each call seeded from what it generates, not from who runs it.

``generate`` samples one batch from torch's global RNG of the device the model is on (CPU, or the CUDA
device). Each call reseeds that RNG (CPU and the CUDA device, inside ``fork_rng``, so the rest of the
process's RNG is untouched) from ``call_seed(run seed, step, first)``: the samples of a chunk of a step are a
pure function of the weights, the chunk's prompts and those numbers, so any worker (a replacement, after a
resume) draws them again bit for bit, and the engine carries no sampling state across a checkpoint. The
batch is drawn as one: the same chunk (its prompts, ``n`` and ``first``) gives the same samples, another
split of the step's prompts other ones.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rayrl.checkpoint.rng import derived_seed
from rayrl.engines.base import Rollouts
from rayrl.models.forward import response_logprobs
from rayrl.models.loading import load_model_and_tokenizer
from rayrl.tensors import response_mask_from

log = logging.getLogger(__name__)

SEED_SCHEME = "rayrl-hf-call-v1"  # what the rollout/ files say sampling depends on (besides the weights)


def call_seed(run_seed: int, step: int, first: int) -> int:
    """The seed of the generate call whose first sample is sample ``first`` of step ``step``."""
    return derived_seed(run_seed, "generate", first, step)


class HFEngine:
    """The light default engine: one transformers model on CPU (or one GPU)."""

    def __init__(self, cfg: Any) -> None:
        self.run_seed = cfg.runner.seed
        on_gpu = cfg.rollout.num_gpus_per_worker > 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.model, self.tokenizer = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        self.model.to(self.device).eval()
        self.max_new_tokens = cfg.rollout.max_new_tokens
        self.temperature = cfg.rollout.temperature
        self.top_p = cfg.rollout.top_p
        self.micro_batch_size = cfg.actor.micro_batch_size  # for the behaviour log-probs, as the reference

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, step: int, first: int, logprobs: bool = False) -> Rollouts:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].repeat_interleave(n, dim=0).to(self.device)
        mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(self.device)
        on_gpu = self.device.type == "cuda"
        seed = call_seed(self.run_seed, step, first)
        with torch.random.fork_rng(devices=[self.device] if on_gpu else []):
            torch.default_generator.manual_seed(seed)
            if on_gpu:
                torch.cuda.manual_seed(seed)  # the current device: the one the model is on
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        response = out[:, ids.shape[1] :].cpu()
        if response.shape[1] < self.max_new_tokens:
            fill = torch.full((response.shape[0], self.max_new_tokens - response.shape[1]), tok.pad_token_id)
            response = torch.cat([response, fill], dim=1)
        response_mask = response_mask_from(response, tok.eos_token_id, tok.pad_token_id)
        texts = tok.batch_decode(response * response_mask + tok.pad_token_id * (1 - response_mask), skip_special_tokens=True)
        rollouts = Rollouts(ids.cpu(), mask.cpu(), response, response_mask, texts, tok.pad_token_id)
        if logprobs:  # the same forward pass as the actor's (rayrl.models.forward), with this engine's weights
            rollouts.logprobs = response_logprobs(self.model, rollouts.prompt_ids, rollouts.prompt_mask, response,
                                                  response_mask, self.micro_batch_size).cpu()
        return rollouts

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    def state_dict(self) -> dict[str, Any]:
        """Sampling depends only on the weights and the per-call seeds: nothing else to save."""
        return {"backend": "hf", "seed_scheme": SEED_SCHEME}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed_scheme") != SEED_SCHEME:
            log.warning("rollout state was saved by %s; this engine seeds each generate call from (run seed, step, "
                        "first sample), so sampling continues reproducibly but does not draw what the saved engine "
                        "would have", f"the {state['backend']} engine" if state.get("backend") not in (None, "hf")
                        else "an older rayrl (per-worker generator streams)")
