"""The interface every generation engine implements.

A rollout worker owns one engine. Sampling depends on the policy weights and on seeds derived from (run
seed, step, sample index in the step) only, never on which worker samples or what it sampled before: any
engine holding the same weights generates a chunk of a step bit-identically (a lost worker's chunk is
regenerated elsewhere), and ``state_dict()`` holds no RNG state, only the seed scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Rollouts:
    """Generated samples: ``n`` consecutive rows per prompt, prompts left-padded, responses right-padded."""

    prompt_ids: torch.Tensor  # [N, P] left-padded with pad_id
    prompt_mask: torch.Tensor  # [N, P] 1 for real prompt tokens
    response_ids: torch.Tensor  # [N, R] right-padded with pad_id
    response_mask: torch.Tensor  # [N, R] 1 up to and including the first eos
    response_texts: list[str]
    pad_id: int
    scores: list[dict[str, float]] | None = None  # per sample, when scored where generated (rayrl.data.scoring)
    logprobs: torch.Tensor | None = None  # [N, R] the generating policy's (rollout.async_steps > 0), else None
    gen_s: float = 0.0  # seconds the generating worker took (the slowest one's, after concat)

    @staticmethod
    def concat(parts: list["Rollouts"]) -> "Rollouts":
        """Join the outputs of several workers, re-padding prompts (left) and responses (right)."""
        pad_id = parts[0].pad_id
        p_len = max(p.prompt_ids.shape[1] for p in parts)
        r_len = max(p.response_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
            extra = width - t.shape[1]
            if extra == 0:
                return t
            fill = torch.full((t.shape[0], extra), value, dtype=t.dtype)
            return torch.cat([fill, t] if left else [t, fill], dim=1)

        return Rollouts(
            prompt_ids=torch.cat([pad(p.prompt_ids, p_len, pad_id, True) for p in parts]),
            prompt_mask=torch.cat([pad(p.prompt_mask, p_len, 0, True) for p in parts]),
            response_ids=torch.cat([pad(p.response_ids, r_len, pad_id, False) for p in parts]),
            response_mask=torch.cat([pad(p.response_mask, r_len, 0, False) for p in parts]),
            response_texts=[t for p in parts for t in p.response_texts],
            pad_id=pad_id,
            scores=None if any(p.scores is None for p in parts) else [s for p in parts for s in p.scores],
            logprobs=(None if any(p.logprobs is None for p in parts)
                      else torch.cat([pad(p.logprobs, r_len, 0.0, False) for p in parts])),
            gen_s=max(p.gen_s for p in parts),
        )


class GenerationEngine(Protocol):
    """What a rollout worker needs from an engine."""

    def generate(self, prompts: list[str], n: int, step: int, first: int, logprobs: bool = False) -> Rollouts:
        """Sample ``n`` responses per prompt; seeded from ``step`` and ``first``, the index in the step of
        the call's first sample. ``logprobs``: also the log-probs the engine's policy gave the sampled tokens
        (``Rollouts.logprobs``, the behaviour policy's for the off-policy ratio when rollouts run ahead of
        training), from the model's logits before temperature and top-p, as the actor's forward pass computes
        them (rayrl.models.forward)."""

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the policy weights in place (full, unsharded tensors keyed by HF names)."""

    def state_dict(self) -> dict[str, Any]:
        """What sampling depends on besides the weights: the engine and its seed scheme (no RNG state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check a saved ``state_dict``: one of another engine or seed scheme (an older checkpoint) is
        loaded with a warning that sampling goes on reproducibly, but not as the saved engine would have."""
