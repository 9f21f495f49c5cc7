"""hone's GRPO math against TRL's own GRPOTrainer code, run on the same tensors.

Nothing of TRL's formulas is re-typed here: a bare `GRPOTrainer` (made with `object.__new__`, so no model,
tokenizer or dataset is loaded) gets just the attributes its methods read, and the real methods run:

* `GRPOTrainer._compute_loss`, with `_get_per_token_logps_and_entropies` replaced by a stub that hands back
  fixed per-token log-probs, so TRL's ratio (coef_1), clip (coef_2 with epsilon_low / epsilon_high), k3 KL
  with coefficient beta, and each loss_type's reduction are what produce the number compared;
* `GRPOTrainer._generate_and_score_completions`, with `_generate` and `_calculate_rewards` stubbed to return
  fixed completions and rewards, so TRL's group mean / std advantage (scale_rewards) is what is compared.

How hone's names map onto TRL's options (checked by the tests below, loss and gradient within 1e-5):

=========================  ===========================================================================
hone                       TRL GRPOConfig
=========================  ===========================================================================
group_advantages grpo      scale_rewards="group" (unbiased std, + 1e-4), multi_objective_aggregation
                           "sum_then_normalize" with the weighted reward sum as hone's reward.
group_advantages rloo      scale_rewards="none" times G / (G - 1): r - mean(others) = G/(G-1) (r - mean).
group_advantages           no TRL equivalent. scale_rewards="batch" divides the group-centred reward by the
  reinforce_pp             batch std of the *raw* rewards; hone divides by the std of the *centred* ones.
kl_per_token k3            the beta term, exp(ref - logp) - (ref - logp) - 1, use_bias_correction_kl=False.
clip_low / clip_high       epsilon_low / epsilon_high; TRL's two-sided clip (delta) must stay None.
token_mean                 loss_type="bnpo" exactly. loss_type="dapo" only when the micro-batch is the
                           whole generation batch on one process: dapo divides by `num_items_in_batch`, the
                           masked-token count of the whole generation batch over all processes (rescaled by
                           gradient_accumulation_steps / steps_per_generation), not this micro-batch's.
seq_mean_token_mean        loss_type="grpo".
seq_mean_token_sum_norm    loss_type="dr_grpo" only when the [samples, tokens] tensors are padded to
                           max_completion_length. TRL divides by B * max_completion_length, a config
                           constant; hone divides by B * mask.size(1), the width of the tensor it is given.
                           TRL pads completions to the longest one in the batch, so on TRL-shaped tensors
                           hone's value is TRL's times max_completion_length / longest completion.
=========================  ===========================================================================

Options with no hone counterpart are held at TRL's defaults: importance_sampling_level="token",
top_entropy_quantile=1.0, no off-policy mask, no vLLM importance sampling, no entropy bonus, no aux loss,
current_gradient_accumulation_steps=1 (TRL divides grpo/bnpo/dr_grpo by it; hone leaves that to the caller).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer

from hone.rl.algorithms import group_advantages, kl_per_token, policy_loss, truncated_is_weight

TOL = 1e-5
B, T = 6, 7  # samples, completion tokens (the longest completion in the batch)
HONE_AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean"}


class _Accelerator:
    """One process, no distribution: what TRL's metric code asks of an accelerate.Accelerator."""

    device = torch.device("cpu")
    num_processes, process_index, is_main_process, sync_gradients = 1, 0, True, True

    def gather(self, t):
        return t if t.dim() else t.unsqueeze(0)

    gather_for_metrics = gather

    def reduce(self, t, reduction="sum"):
        return t


def _bare_trainer(**overrides) -> GRPOTrainer:
    trainer = object.__new__(GRPOTrainer)
    attrs = {
        "model": SimpleNamespace(training=True, is_gradient_checkpointing=False),
        "accelerator": _Accelerator(),
        "args": SimpleNamespace(
            use_bias_correction_kl=False,
            delta=None,
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            gradient_checkpointing_kwargs=None,
            per_device_train_batch_size=B,
            report_to=[],
        ),
        "loss_type": "grpo",
        "beta": 0.0,
        "epsilon_low": 0.2,
        "epsilon_high": 0.2,
        "max_completion_length": T,
        "importance_sampling_level": "token",
        "top_entropy_quantile": 1.0,
        "off_policy_mask_threshold": None,
        "use_vllm": False,
        "vllm_importance_sampling_correction": False,
        "aux_loss_enabled": False,
        "_entropy_bonus_enabled": False,
        "current_gradient_accumulation_steps": 1,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
    }
    attrs.update(overrides)
    for name, value in attrs.items():
        setattr(trainer, name, value)
    return trainer


def _batch(seed: int = 0):
    """Per-token log-probs with ratios well outside [0.8, 1.28], mixed-sign advantages, ragged mask."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3 - 0.05
    old = logp + 0.4 * torch.randn(B, T, generator=g)
    ref = logp + 0.5 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    adv[2] = 0.0  # a sample from a group that all scored the same
    lengths = torch.tensor([T, 3, 5, 1, 0, T])  # one empty completion (all masked)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return logp, old, ref, adv, mask


def _trl_loss(trainer: GRPOTrainer, logp, old, ref, adv, mask, is_ratio=None):
    """TRL's `_compute_loss` on these log-probs; returns the loss and d loss / d logp."""
    leaf = logp.clone().requires_grad_(True)

    def per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == leaf.size(1)
        return leaf, torch.ones_like(leaf).detach(), None

    trainer._get_per_token_logps_and_entropies = per_token_logps_and_entropies
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, logp.size(1), dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "num_items_in_batch": mask.sum(),
    }
    if old is not None:
        inputs["old_per_token_logps"] = old
    if trainer.beta != 0.0:
        inputs["ref_per_token_logps"] = ref
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


def _hone_loss(logp, old, ref, adv, mask, clip_low, clip_high, beta, aggregation):
    leaf = logp.clone().requires_grad_(True)
    old = leaf.detach() if old is None else old
    kl = kl_per_token(leaf, ref, "k3") if beta else None
    loss, stats = policy_loss(leaf, old, adv, mask, clip_low, clip_high, kl=kl, kl_coef=beta, aggregation=aggregation)
    loss.backward()
    return loss.detach(), leaf.grad, stats


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("on_policy", [False, True])
def test_policy_loss_matches_trl_compute_loss(loss_type, beta, eps_low, eps_high, on_policy):
    logp, old, ref, adv, mask = _batch(seed=1)
    old = None if on_policy else old
    trainer = _bare_trainer(loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high)
    trl_loss, trl_grad = _trl_loss(trainer, logp, old, ref, adv, mask)
    aggregation = HONE_AGGREGATION.get(loss_type, "seq_mean_token_sum_norm")  # dr_grpo: T == max_completion_length
    loss, grad, stats = _hone_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, aggregation)

    assert abs(float(loss) - float(trl_loss)) < TOL, (loss_type, float(loss), float(trl_loss))
    assert (grad - trl_grad).abs().max() < TOL
    metrics = trainer._metrics["train"]
    if not on_policy:  # clipping only happens off-policy; make sure this batch exercises it
        assert metrics["clip_ratio/region_mean"][-1] > 0.1
    assert stats["clip_fraction"] == pytest.approx(metrics["clip_ratio/region_mean"][-1], abs=TOL)
    if beta:
        assert stats["kl"] == pytest.approx(metrics["kl"][-1], abs=TOL)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_truncated_is_correction_matches_trl_vllm_token_truncate(loss_type, beta):
    """TRL with use_vllm multiplies each token's surrogate by min(exp(old - sampling), cap), where old are
    the trainer's log-probs before the update and sampling vLLM's; hone's is_weight is the same factor."""
    logp, sampling, ref, adv, mask = _batch(seed=3)  # `old` of the batch stands in for the engine's log-probs
    cap = 1.5
    weight = truncated_is_weight(logp, sampling, cap)
    assert (weight == cap).any() and (weight < 1).any()  # the batch exercises the cap and down-weighting
    trainer = _bare_trainer(loss_type=loss_type, beta=beta, use_vllm=True, vllm_importance_sampling_correction=True)
    trl_loss, trl_grad = _trl_loss(trainer, logp, None, ref, adv, mask, is_ratio=weight)

    leaf = logp.clone().requires_grad_(True)
    kl = kl_per_token(leaf, ref, "k3") if beta else None
    aggregation = HONE_AGGREGATION[loss_type]
    loss, _ = policy_loss(leaf, leaf.detach(), adv, mask, kl=kl, kl_coef=beta, aggregation=aggregation, is_weight=weight)
    loss.backward()
    assert abs(float(loss) - float(trl_loss)) < TOL
    assert (leaf.grad - trl_grad).abs().max() < TOL


def test_dr_grpo_matches_only_at_max_completion_length_width():
    """TRL's dr_grpo divides by max_completion_length; hone by the width of the tensor it is handed."""
    logp, old, ref, adv, mask = _batch(seed=2)
    max_len = 2 * T
    trainer = _bare_trainer(loss_type="dr_grpo", beta=0.04, max_completion_length=max_len)
    trl_loss, _ = _trl_loss(trainer, logp, old, ref, adv, mask)

    def widen(x, value=0.0):
        return torch.cat([x, torch.full((B, max_len - T), value, dtype=x.dtype)], dim=1)

    padded = widen(logp), widen(old), widen(ref), adv, widen(mask, 0)
    at_max, _, _ = _hone_loss(*padded, 0.2, 0.2, 0.04, "seq_mean_token_sum_norm")
    assert abs(float(at_max) - float(trl_loss)) < TOL

    as_trl_pads_it, _, _ = _hone_loss(logp, old, ref, adv, mask, 0.2, 0.2, 0.04, "seq_mean_token_sum_norm")
    assert float(as_trl_pads_it) == pytest.approx(float(trl_loss) * max_len / T, abs=TOL)


def _trl_advantages(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int, scale_rewards: str):
    """Advantages from TRL's `_generate_and_score_completions`, generation and reward functions stubbed."""
    n = rewards_per_func.size(0)
    trainer = _bare_trainer(
        scale_rewards=scale_rewards,
        num_generations=group_size,
        num_iterations=1,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=weights,
        reward_func_names=[f"r{i}" for i in range(weights.numel())],
        environment_factories=None,
        environments=None,
        tools=None,
        mask_truncated_completions=False,
        pad_to_multiple_of=None,
        _tokenizer=SimpleNamespace(pad_token_id=0),
        ref_model=None,
        log_multimodal=False,
        _pending_extra_logs={},
        _pending_metrics={},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [], "extra": defaultdict(list)},
    )
    trainer.args.per_device_train_batch_size = n
    completion_ids = [[5, 6, 7][: 1 + i % 3] for i in range(n)]
    trainer._generate = lambda prompts: ([[1, 2]] * n, completion_ids, None, ["c"] * n, None, {}, None, None)
    trainer._calculate_rewards = lambda *args: rewards_per_func.clone()
    out = GRPOTrainer._generate_and_score_completions(trainer, [{"prompt": f"p{i // group_size}"} for i in range(n)])
    return out["advantages"]


def _rewards(group_size: int):
    g = torch.Generator().manual_seed(3)
    per_func = torch.randint(0, 4, (4 * group_size, 2), generator=g).float()
    per_func[:group_size] = torch.tensor([1.0, 2.0])  # a group that all scored the same
    per_func[group_size : 2 * group_size, 1] = torch.rand(group_size, generator=g)
    return per_func, torch.tensor([1.0, 0.5])


@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_grpo_advantages_match_trl_scale_rewards_group(group_size):
    per_func, weights = _rewards(group_size)
    trl_adv = _trl_advantages(per_func, weights, group_size, "group")
    adv = group_advantages((per_func * weights).sum(dim=1), group_size, "grpo")
    assert (adv - trl_adv).abs().max() < TOL
    assert torch.count_nonzero(adv[:group_size]) == 0


@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_rloo_advantages_are_trl_scale_rewards_none_times_g_over_g_minus_1(group_size):
    per_func, weights = _rewards(group_size)
    trl_adv = _trl_advantages(per_func, weights, group_size, "none")
    adv = group_advantages((per_func * weights).sum(dim=1), group_size, "rloo")
    assert (adv - trl_adv * group_size / (group_size - 1)).abs().max() < TOL
