"""Pure functions for policy-gradient RL: group advantages, KL estimators and the clipped policy loss.

No Ray, no process group, no model: tensors in, tensors out, so each is checked against hand-computed
values. Shapes: rewards are [num_prompts * group_size], ordered group by group (a prompt's G samples
are adjacent); per-token tensors are [num_samples, num_tokens] with a 0/1 `mask` over real tokens.
"""

from __future__ import annotations

from typing import Any

import torch

ADVANTAGES = ("grpo", "rloo", "reinforce_pp")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """One advantage per sample, from the rewards of its group.

    grpo:          (r - group mean) / (group std + eps), the std unbiased as in TRL's GRPOTrainer.
    rloo:          r - mean of the *other* samples of the group (leave-one-out baseline).
    reinforce_pp:  r - group mean, then whitened over the whole batch (REINFORCE++ with a group baseline).
    """
    if method not in ADVANTAGES:
        raise ValueError(f"advantage {method!r} is unknown; choose one of {', '.join(ADVANTAGES)}")
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: a group baseline needs at least 2 samples per prompt")
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if method == "grpo":
        return ((grouped - mean) / (grouped.std(dim=1, keepdim=True) + eps)).view(-1)
    if method == "rloo":
        others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
        return (grouped - others).view(-1)
    centred = (grouped - mean).view(-1)
    return (centred - centred.mean()) / (centred.std() + eps)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples drawn from the policy (Schulman's k1-k3).

    k1 = log p - log q (unbiased, high variance, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = q/p - 1 - log(q/p) (unbiased, always >= 0; what TRL's GRPO uses).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator {estimator!r} is unknown; choose one of {', '.join(KL_ESTIMATORS)}")
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(-log_ratio) + log_ratio - 1.0


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    how: str,
    total_tokens: float | None = None,
    total_samples: int | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a [samples, tokens] loss to a scalar.

    token_mean:               every real token in the batch weighs the same (DAPO).
    seq_mean_token_mean:      mean over each sample's tokens, then over samples (the original GRPO).
    seq_mean_token_sum_norm:  each sample's token sum over the longest possible length (Dr. GRPO).

    A step's batch is split into micro-batches and ranks; passing the whole batch's `total_tokens` /
    `total_samples` (and `max_len`, the longest completion allowed) makes the micro-batch losses add up
    to exactly the loss of the whole batch.
    """
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if how == "token_mean":
        return masked.sum() / (total_tokens if total_tokens is not None else mask.sum().clamp(min=1))
    samples = total_samples if total_samples is not None else per_token.size(0)
    if how == "seq_mean_token_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / samples
    if how == "seq_mean_token_sum_norm":
        return (masked.sum(dim=1) / (max_len or mask.size(1))).sum() / samples
    raise ValueError(f"loss aggregation {how!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")


def truncated_is_weight(train_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token truncated importance weight min(pi_train / pi_rollout, cap), no gradient.

    The rollout engine samples from its own copy of the weights (bf16 vLLM kernels, or weights one update
    old under async rollout), so its token probabilities are not the trainer's; reweighting each token's
    loss by the trainer/rollout ratio makes the gradient the trainer's own policy gradient again, and the
    cap bounds the variance a rare token could add (truncated IS, as TRL's token_truncate mode).
    """
    return torch.exp(train_logp - rollout_logp).clamp(max=cap).detach()


def rollout_mismatch(train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the rollout engine's token log-probs are from the trainer's on the same tokens: the mean
    |difference|, the largest, and KL(rollout || train) estimated from the rollout's own samples (k1)."""
    real = mask.bool()
    if not real.any():
        return {"mismatch_logp_abs": 0.0, "mismatch_logp_max": 0.0, "mismatch_kl": 0.0}
    diff = (rollout_logp - train_logp).detach()[real]
    return {
        "mismatch_logp_abs": float(diff.abs().mean()),
        "mismatch_logp_max": float(diff.abs().max()),
        "mismatch_kl": float(diff.mean()),
    }


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: str = "token_mean",
    totals: dict[str, Any] | None = None,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss (PPO/GRPO) with an optional KL penalty, and its diagnostics.

    ratio = exp(logp - old_logp) corrects for samples drawn by an older policy; with a single update per
    batch and old_logp the trainer's own log-probs it is 1 and the gradient is the plain policy gradient.
    `is_weight` (see `truncated_is_weight`) multiplies each token's surrogate, not its KL penalty, to
    correct for a rollout engine whose distribution differs from the trainer's. `totals` holds the whole
    step's total_tokens / total_samples / max_len when this is one micro-batch of it (see `aggregate`).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.min(unclipped, clipped)
    if is_weight is not None:
        per_token = per_token * is_weight
    if kl is not None and kl_coef:
        per_token = per_token + kl_coef * kl
    loss = aggregate(per_token, mask, aggregation, **(totals or {}))
    real, ratio = mask.bool(), ratio.detach()
    stats = {
        "clip_fraction": float((clipped < unclipped).detach()[real].float().mean()) if real.any() else 0.0,
        "kl": float(kl.detach()[real].mean()) if kl is not None and real.any() else 0.0,
        "ratio_mean": float(ratio[real].mean()) if real.any() else 1.0,
    }
    return loss, stats


def fill_invalid(rewards: torch.Tensor, valid: torch.Tensor, group_size: int) -> torch.Tensor:
    """Give skipped samples their group's mean valid reward, so they leave the others' advantages as they
    would be without them (a group with no valid sample gets 0)."""
    grouped, ok = rewards.float().view(-1, group_size), valid.view(-1, group_size).float()
    safe = torch.where(ok.bool(), grouped, torch.zeros_like(grouped))
    mean = safe.sum(dim=1, keepdim=True) / ok.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(ok.bool(), grouped, mean.expand_as(grouped)).view(-1)
