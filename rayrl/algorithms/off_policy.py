"""The off-policy side of GRPO with rollouts generated ahead of training (rollout.async_steps), as pure
functions: how far behind the trained policy the policy that generated a sample is, and the importance
ratio against it.

Versions count optimizer steps: version v is the policy after v training steps, so step s trains version
s - 1. Synchronous (async_steps 0), step s samples with version s - 1 and every sample is on-policy (lag 0);
with async_steps k the samples of step s were generated k steps earlier, by version s - 1 - k.
"""

from __future__ import annotations

import torch
from torch import Tensor


def policy_lag(step: int, versions: Tensor) -> Tensor:
    """Per sample, how many updates the policy trained at ``step`` (version step - 1) is ahead of the
    version that generated the sample: 0 is on-policy."""
    lag = (step - 1) - versions
    if bool((lag < 0).any()):
        raise ValueError(f"a sample of step {step} claims a policy version after {step - 1}: {versions.tolist()}")
    return lag


def importance_ratio(logp: Tensor, behaviour_logp: Tensor) -> Tensor:
    """pi_theta / pi_behaviour per token, from log-probs: the PPO ratio when the behaviour policy is the one
    that sampled the tokens (the standard off-policy correction; on-policy it starts at 1)."""
    return torch.exp(logp - behaviour_logp)
