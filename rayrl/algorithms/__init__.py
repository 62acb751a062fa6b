"""RL algorithms as pure tensor functions."""

from __future__ import annotations

from rayrl.algorithms.grpo import group_advantages, kl_k3, policy_loss

__all__ = ["group_advantages", "kl_k3", "policy_loss"]
