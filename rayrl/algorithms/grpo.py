"""GRPO advantages and losses as pure tensor functions (no Ray, no distributed state).

Layout conventions: a rollout batch holds B = num_prompts * n sequences, the n samples of one prompt
consecutive; per-token tensors are [B, T] over the response positions, aligned so that `logp[b, t]` is the
log-probability of response token t of sequence b.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rayrl.algorithms.off_policy import importance_ratio

# Bounds on log-ratios before exp(): exp(20) is ~5e8, finite in float32; beyond that the KL estimate is
# meaningless anyway and an inf would poison the whole loss.
_MAX_LOG_RATIO = 20.0


def group_advantages(rewards: Tensor, n: int, norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Reward minus its group's mean, optionally over the group's std (GRPO's baseline without a critic).

    A group is n consecutive samples of one prompt. The std is the population std (unbiased=False): it is
    defined for any n >= 1 and a group of [1, 0] gives advantages of about +-1 rather than +-0.71.
    A group whose rewards are all equal gets zero advantages (no signal, no gradient).
    """
    if rewards.dim() != 1 or n < 1 or rewards.numel() % n != 0:
        raise ValueError(f"rewards must be 1-D with a length divisible by n={n}, got shape {tuple(rewards.shape)}")
    groups = rewards.to(torch.float32).view(-1, n)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if norm_by_std:
        centered = centered / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.reshape(-1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || ref): exp(d) - d - 1 with d = ref_logp - logp.

    Unbiased, always >= 0 and low-variance (Schulman's k3); the log-ratio is clamped so it stays finite.
    """
    d = (ref_logp - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio: float,
    kl_coef: float,
    ref_logp: Tensor | None = None,
    token_count: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip surrogate plus kl_coef * k3 KL, summed over response tokens and divided by token_count.

    old_logp: the log-probs of the policy that sampled the tokens (the behaviour policy): the current
    policy's before the update when sampling is synchronous, the generating engine's when rollouts run
    ahead (rollout.async_steps), so that the ratio is the off-policy importance ratio, clipped alike.

    token_count is the number of response tokens in the GLOBAL batch: each data-parallel shard divides its
    own sum by the same number, so the shards' losses (and gradients) add up to exactly what one process
    computing the whole batch would get. Default: this call's mask.sum() (a plain token mean).
    The stats use the same normalisation, so they too add up across shards. ref_logp None: no KL term.
    """
    mask = response_mask.to(logp.dtype)
    denom = float(mask.sum().item()) if token_count is None else float(token_count)
    denom = max(denom, 1.0)
    adv = advantages.to(logp.dtype).unsqueeze(-1)

    ratio = importance_ratio(logp, old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    pg_tokens = torch.maximum(unclipped, clipped)
    per_token = pg_tokens
    kl_tokens = None
    if ref_logp is not None:
        kl_tokens = kl_k3(logp, ref_logp)
        per_token = per_token + kl_coef * kl_tokens
    loss = (per_token * mask).sum() / denom

    with torch.no_grad():
        stats = {
            "pg_loss": (pg_tokens * mask).sum() / denom,
            "kl": (kl_tokens * mask).sum() / denom if kl_tokens is not None else torch.zeros((), dtype=logp.dtype),
            # tokens whose gradient the clip cuts off (the clipped branch is the active one)
            "clip_frac": ((clipped > unclipped).to(logp.dtype) * mask).sum() / denom,
            "ratio_mean": (ratio * mask).sum() / denom,
        }
    return loss, {k: v.detach() for k, v in stats.items()}
