"""The RL math against hand-computed values."""

import math

import pytest
import torch

from hone.rl.algorithms import aggregate, group_advantages, kl_per_token, policy_loss, rollout_mismatch, truncated_is_weight


def test_grpo_advantages_normalize_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    adv = group_advantages(rewards, group_size=4, method="grpo", eps=0.0 + 1e-12)
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of [1, 0, 0, 1]
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.allclose(adv[4:], torch.zeros(4))  # a group that all scored the same teaches nothing


def test_rloo_uses_the_mean_of_the_other_samples():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0]), group_size=2, method="rloo")
    assert adv.tolist() == [1.0, -1.0, -2.0, 2.0]
    adv3 = group_advantages(torch.tensor([3.0, 0.0, 0.0]), group_size=3, method="rloo")
    assert adv3.tolist() == [3.0, -1.5, -1.5]


def test_reinforce_pp_whitens_group_centred_rewards_over_the_batch():
    adv = group_advantages(torch.tensor([1.0, 0.0, 4.0, 0.0]), group_size=2, method="reinforce_pp", eps=0.0)
    centred = torch.tensor([0.5, -0.5, 2.0, -2.0])
    assert torch.allclose(adv, centred / centred.std())


def test_group_size_one_is_refused():
    with pytest.raises(ValueError, match="group_size=1"):
        group_advantages(torch.tensor([1.0, 2.0]), group_size=1)


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    log_ratio = math.log(2.0)
    assert math.isclose(float(kl_per_token(logp, ref, "k1")), log_ratio, rel_tol=1e-6)
    assert math.isclose(float(kl_per_token(logp, ref, "k2")), 0.5 * log_ratio**2, rel_tol=1e-6)
    assert math.isclose(float(kl_per_token(logp, ref, "k3")), 0.5 - 1 + log_ratio, rel_tol=1e-6)  # q/p - 1 - log(q/p)
    assert float(kl_per_token(ref, ref, "k3")) == 0.0


def test_aggregations():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(aggregate(per_token, mask, "token_mean")) == pytest.approx(10 / 4)
    assert float(aggregate(per_token, mask, "seq_mean_token_mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(per_token, mask, "seq_mean_token_sum_norm")) == pytest.approx((6 / 3 + 4 / 3) / 2)


def test_policy_loss_clips_and_adds_kl():
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))  # ratios 1.5, 1.0 / 0.5, 1.0 against old = 0
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # token 1: min(1.5, 1.2) = 1.2; token 2: 1.0; token 3: A=-1: min(-0.5, -0.8) = -0.8 -> loss terms -1.2, -1.0, +0.8
    assert float(loss) == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    kl = torch.full((2, 2), 0.5)
    with_kl, stats = policy_loss(logp, old, adv, mask, kl=kl, kl_coef=0.1)
    assert float(with_kl) == pytest.approx(float(loss) + 0.05)
    assert stats["kl"] == pytest.approx(0.5)


def test_on_policy_gradient_is_the_advantage_weighted_log_prob_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0]]))  # -A / num_tokens per token


def test_truncated_is_weight_reweights_the_surrogate_not_the_kl():
    train = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    rollout = torch.log(torch.tensor([[0.25, 0.9, 0.8]]))  # train/rollout = 2, 1, 0.25
    weight = truncated_is_weight(train, rollout, cap=1.5)
    assert torch.allclose(weight, torch.tensor([[1.5, 1.0, 0.25]]))  # 2 is truncated at the cap

    logp = train.clone().requires_grad_(True)
    mask, adv, kl = torch.ones(1, 3), torch.tensor([1.0]), torch.full((1, 3), 0.3)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, kl=kl, kl_coef=0.1, is_weight=weight)
    assert float(loss) == pytest.approx((-(1.5 + 1.0 + 0.25) + 3 * 0.03) / 3)
    loss.backward()
    assert torch.allclose(logp.grad, -weight / 3)  # each token's policy gradient scaled by its weight


def test_rollout_mismatch_measures_real_tokens_only():
    train = torch.tensor([[-1.0, -2.0, -9.0]])
    rollout = torch.tensor([[-1.5, -1.0, 0.0]])
    stats = rollout_mismatch(train, rollout, torch.tensor([[1, 1, 0]]))
    assert stats == pytest.approx({"mismatch_logp_abs": 0.75, "mismatch_logp_max": 1.0, "mismatch_kl": 0.25})
    assert rollout_mismatch(train, rollout, torch.zeros(1, 3))["mismatch_logp_abs"] == 0.0
