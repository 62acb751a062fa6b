"""Hand-computed checks of the GRPO tensor functions and the shared tensor helpers."""

from __future__ import annotations

import math

import pytest
import torch

from rayrl.algorithms.grpo import group_advantages, kl_k3, policy_loss
from rayrl.tensors import response_mask_from, token_logprobs


def test_group_advantages_normalised_by_population_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), n=4)
    # mean 0.5, population std 0.5
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(adv, expected)


def test_group_advantages_groups_are_independent():
    adv = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0, 0.0, 2.0]), n=2, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, -1.0, 1.0]))
    normed = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0, 0.0, 2.0]), n=2)
    torch.testing.assert_close(normed, torch.tensor([1.0, -1.0, 0.0, 0.0, -1.0, 1.0]), atol=1e-5, rtol=0)


def test_group_advantages_three_samples():
    adv = group_advantages(torch.tensor([0.0, 0.0, 0.6]), n=3, eps=0.0)
    mean, std = 0.2, math.sqrt((0.04 + 0.04 + 0.16) / 3)
    torch.testing.assert_close(adv, torch.tensor([-mean / std, -mean / std, 0.4 / std]))


def test_group_advantages_rejects_ragged_batch():
    with pytest.raises(ValueError, match="divisible by n=4"):
        group_advantages(torch.zeros(6), n=4)


def test_kl_k3_values():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(kl_k3(logp, logp), torch.zeros(3))
    d = 0.3  # ref - logp
    got = kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0 + d]))
    torch.testing.assert_close(got, torch.tensor([math.exp(d) - d - 1.0]))
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()
    assert torch.isfinite(kl_k3(torch.tensor([-500.0]), torch.tensor([0.0]))).all()


def _one_token(ratio: float, adv: float, clip: float = 0.2):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), clip, 0.0)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_policy_loss_clip_positive_advantage_above_range():
    loss, grad, stats = _one_token(1.5, 2.0)
    assert loss == pytest.approx(-2.0 * 1.2)  # clipped at 1 + eps
    assert grad == 0.0
    assert stats["clip_frac"].item() == 1.0
    assert stats["ratio_mean"].item() == pytest.approx(1.5)


def test_policy_loss_no_clip_negative_advantage_above_range():
    loss, grad, stats = _one_token(1.5, -2.0)
    assert loss == pytest.approx(2.0 * 1.5)  # pessimistic branch keeps the unclipped ratio
    assert grad == pytest.approx(2.0 * 1.5)  # d/dlogp of -A * exp(logp)
    assert stats["clip_frac"].item() == 0.0


def test_policy_loss_clip_negative_advantage_below_range():
    loss, grad, stats = _one_token(0.5, -1.0)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    assert stats["clip_frac"].item() == 1.0


def test_policy_loss_inside_range_is_plain_surrogate():
    loss, grad, _ = _one_token(1.1, 3.0)
    assert loss == pytest.approx(-3.3)
    assert grad == pytest.approx(-3.3)


def test_policy_loss_masks_tokens_and_adds_kl():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    old = logp.clone()
    ref = torch.tensor([[-1.2, -2.0, 0.0], [-0.5, -0.1, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = policy_loss(logp, old, adv, mask, clip_ratio=0.2, kl_coef=0.5, ref_logp=ref)
    kls = [math.exp(-0.2) + 0.2 - 1, 0.0, 0.0, math.exp(0.4) - 0.4 - 1]
    pg = (-1.0 - 1.0 + 2.0 + 2.0) / 4
    assert stats["pg_loss"].item() == pytest.approx(pg)
    assert stats["kl"].item() == pytest.approx(sum(kls) / 4, rel=1e-5)
    assert loss.item() == pytest.approx(pg + 0.5 * sum(kls) / 4, rel=1e-5)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert not any(v.requires_grad for v in stats.values())


def test_policy_loss_global_token_count_makes_shards_sum_to_full_batch():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 5, generator=g)
    old = logp + 0.3 * torch.randn(4, 5, generator=g)
    ref = logp + 0.1 * torch.randn(4, 5, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    full, full_stats = policy_loss(logp, old, adv, mask, 0.2, 0.1, ref)
    total = float(mask.sum())
    halves = (slice(0, 2), slice(2, 4))
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], 0.2, 0.1, ref[s], token_count=total) for s in halves]
    torch.testing.assert_close(parts[0][0] + parts[1][0], full)
    for key in full_stats:
        torch.testing.assert_close(parts[0][1][key] + parts[1][1][key], full_stats[key])
    # with local normalisation the halves would NOT add up (the shards have 7 and 5 tokens)
    local = [policy_loss(logp[s], old[s], adv[s], mask[s], 0.2, 0.1, ref[s])[0] for s in halves]
    assert not torch.allclose(local[0] + local[1], full)


def test_token_logprobs_matches_hand_computation():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]], dtype=torch.bfloat16)
    tokens = torch.tensor([[2, 0]])
    got = token_logprobs(logits, tokens)
    assert got.dtype == torch.float32
    lse = math.log(1 + math.e + math.e**2)
    torch.testing.assert_close(got, torch.tensor([[2.0 - lse, -math.log(3.0)]]))


def test_response_mask_from():
    eos, pad = 2, 0
    toks = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 8], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0], [5, 6, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert torch.equal(response_mask_from(toks, eos, pad), expected)


def test_response_mask_when_pad_is_eos():
    toks = torch.tensor([[5, 6, 2, 2, 2], [2, 2, 2, 2, 2]])
    assert torch.equal(response_mask_from(toks, 2, 2), torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]))
