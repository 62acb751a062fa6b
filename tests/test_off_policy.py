"""Hand-computed checks of the off-policy functions (rollouts generated ahead of training)."""

from __future__ import annotations

import math

import pytest
import torch

from rayrl.algorithms.grpo import policy_loss
from rayrl.algorithms.off_policy import importance_ratio, policy_lag


def test_policy_lag_counts_updates_behind():
    assert policy_lag(5, torch.tensor([4, 3, 2])).tolist() == [0, 1, 2]
    assert policy_lag(1, torch.tensor([0])).tolist() == [0]
    with pytest.raises(ValueError, match="after 2"):
        policy_lag(3, torch.tensor([3]))


def test_importance_ratio_against_the_behaviour_policy():
    ratio = importance_ratio(torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.25, 0.4])))
    torch.testing.assert_close(ratio, torch.tensor([2.0, 0.5]))


def test_loss_with_behaviour_logprobs_is_clipped_as_on_policy():
    """pi/pi_b = 2 on token 0, 0.5 on token 1; clip 0.2. Advantage +1: token 0 takes the clipped branch
    (max(-2, -1.2) = -1.2), token 1 the unclipped (max(-0.5, -0.8) = -0.5). Advantage -1: token 0 unclipped
    (max(2, 1.2) = 2), token 1 clipped (max(0.5, 0.8) = 0.8)."""
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.5, 0.2]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4], [0.25, 0.4]]))
    mask = torch.ones(2, 2)
    loss, stats = policy_loss(logp, behaviour, torch.tensor([1.0, -1.0]), mask, clip_ratio=0.2, kl_coef=0.0)
    expected = (-1.2 - 0.5 + 2.0 + 0.8) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert math.isclose(float(stats["clip_frac"]), 2 / 4, rel_tol=1e-6)
    assert math.isclose(float(stats["ratio_mean"]), (2 + 0.5 + 2 + 0.5) / 4, rel_tol=1e-6)


def test_clipped_tokens_get_no_gradient():
    """Token 0 (ratio 2, advantage +1) is clipped: no gradient. Token 1 (ratio 0.5): d(-A r)/d logp = -r."""
    logp = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_(True)
    behaviour = torch.log(torch.tensor([[0.25, 0.4]]))
    loss, _ = policy_loss(logp, behaviour, torch.tensor([1.0]), torch.ones(1, 2), clip_ratio=0.2, kl_coef=0.0)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 2]]))
