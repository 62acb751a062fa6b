"""Generation with transformers ``generate``, sampling from generators the engine owns.

``generate`` samples from torch's global RNG of the device the model is on (CPU, or the CUDA device). The
engine owns one generator per device sampling touches (CPU always, the CUDA device when on GPU), seeded
from the run seed and the worker index: around each call their states are swapped into the global
generators and taken back advanced (``owned_rng``), so every worker draws its own stream, each step
draws new noise, the rest of the process's RNG is untouched, and ``state_dict`` checkpoints them all.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from rayrl.engines.base import Rollouts
from rayrl.models.forward import response_logprobs
from rayrl.models.loading import load_model_and_tokenizer
from rayrl.tensors import response_mask_from

SEED_STRIDE = 1_000_003  # keeps the per-worker streams of different run seeds apart


class HFEngine:
    """The light default engine: one transformers model on CPU (or one GPU)."""

    def __init__(self, cfg: Any, worker_index: int) -> None:
        on_gpu = cfg.rollout.num_gpus_per_worker > 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.model, self.tokenizer = load_model_and_tokenizer(cfg.actor.model, cfg.runner.seed)
        self.model.to(self.device).eval()
        self.max_new_tokens = cfg.rollout.max_new_tokens
        self.temperature = cfg.rollout.temperature
        self.top_p = cfg.rollout.top_p
        self.micro_batch_size = cfg.actor.micro_batch_size  # for the behaviour log-probs, as the reference
        seed = cfg.runner.seed * SEED_STRIDE + worker_index + 1
        self.generators = {"rng": torch.Generator().manual_seed(seed)}  # state_dict keys; "rng": CPU
        if self.device.type == "cuda":
            self.generators["cuda_rng"] = torch.Generator(self.device).manual_seed(seed)

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, step: int, logprobs: bool = False) -> Rollouts:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].repeat_interleave(n, dim=0).to(self.device)
        mask = enc["attention_mask"].repeat_interleave(n, dim=0).to(self.device)
        with owned_rng(list(self.generators.values())):
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
        return {name: g.get_state() for name, g in self.generators.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.generators) - set(state))
        if missing:
            raise ValueError(f"rollout state lacks the generator state {missing} of this engine's devices "
                             f"(saved on another device type?)")
        for name, g in self.generators.items():
            g.set_state(state[name])

    def reseed(self, seed: int) -> None:
        for g in self.generators.values():
            g.manual_seed(seed)


@contextlib.contextmanager
def owned_rng(generators: list[torch.Generator]) -> Iterator[None]:
    """Sample from ``generators`` (one per device) through torch's global RNG: their states go into each
    device's default generator for the block and come back advanced; the global states are restored after."""
    cuda = [g.device for g in generators if g.device.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        for g in generators:
            _set_global_state(g.device, g.get_state())
        yield
        for g in generators:
            g.set_state(_global_state(g.device))


def _global_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_global_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
