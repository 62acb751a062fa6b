"""RL algorithms as pure tensor functions."""

from __future__ import annotations

from rayrl.algorithms.grpo import (
    group_advantages,
    kl_k3,
    masked_mean,
    policy_loss,
    response_mask_from,
    token_logprobs,
)

__all__ = ["group_advantages", "kl_k3", "masked_mean", "policy_loss", "response_mask_from", "token_logprobs"]
