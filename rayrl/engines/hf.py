"""Generation with transformers ``generate``, sampling from a generator the engine owns.

``generate`` samples from torch's global RNG; the engine swaps its own generator state in and out
around each call (``fork_rng``), so the worker's sampling stream is isolated, seeded from the run seed
and the worker index, and checkpointable.
"""

from __future__ import annotations

from typing import Any

import torch

from rayrl.algorithms.grpo import response_mask_from
from rayrl.engines.base import Rollouts
from rayrl.models.loading import load_model_and_tokenizer

SEED_STRIDE = 1_000_003  # keeps the per-worker streams of different run seeds apart


class HFEngine:
    """The light default engine: one transformers model on CPU (or one GPU)."""

    def __init__(self, cfg: Any, worker_index: int) -> None:
        self.device = torch.device("cuda" if cfg.rollout.num_gpus_per_worker > 0 else "cpu")
        self.model, self.tokenizer = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        self.model.to(self.device).eval()
        self.max_new_tokens = cfg.rollout.max_new_tokens
        self.temperature = cfg.rollout.temperature
        self.top_p = cfg.rollout.top_p
        self.rng = torch.Generator().manual_seed(cfg.runner.seed * SEED_STRIDE + worker_index + 1)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, step: int) -> Rollouts:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].repeat_interleave(n, dim=0).to(self.device)
        mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng.get_state())
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
            self.rng.set_state(torch.get_rng_state())
        response = out[:, ids.shape[1] :].cpu()
        if response.shape[1] < self.max_new_tokens:
            fill = torch.full((response.shape[0], self.max_new_tokens - response.shape[1]), tok.pad_token_id)
            response = torch.cat([response, fill], dim=1)
        response_mask = response_mask_from(response, tok.eos_token_id, tok.pad_token_id)
        texts = tok.batch_decode(response * response_mask + tok.pad_token_id * (1 - response_mask), skip_special_tokens=True)
        return Rollouts(ids.cpu(), mask.cpu(), response, response_mask, texts, tok.pad_token_id)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"])

    def reseed(self, seed: int) -> None:
        self.rng.manual_seed(seed)

