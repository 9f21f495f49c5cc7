"""Pure functions for policy-gradient RL: group advantages, KL estimators and the clipped policy loss.

No Ray, no process group, no model: tensors in, tensors out, so each is checked against hand-computed
values. Shapes: rewards are [num_prompts * group_size], ordered group by group (a prompt's G samples
are adjacent); per-token tensors are [num_samples, num_tokens] with a 0/1 `mask` over real tokens.
"""

from __future__ import annotations

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


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce a [samples, tokens] loss to a scalar.

    token_mean:               every real token in the batch weighs the same (DAPO).
    seq_mean_token_mean:      mean over each sample's tokens, then over samples (the original GRPO).
    seq_mean_token_sum_norm:  each sample's token sum over the longest possible length (Dr. GRPO).
    """
    mask = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if how == "seq_mean_token_mean":
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if how == "seq_mean_token_sum_norm":
        return ((per_token * mask).sum(dim=1) / mask.size(1)).mean()
    raise ValueError(f"loss aggregation {how!r} is unknown; choose one of {', '.join(AGGREGATIONS)}")


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss (PPO/GRPO) with an optional KL penalty, and its diagnostics.

    ratio = exp(logp - old_logp) corrects for samples drawn by an older policy (async rollout);
    on-policy it is 1 and the gradient is the plain policy gradient.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.min(unclipped, clipped)
    if kl is not None and kl_coef:
        per_token = per_token + kl_coef * kl
    loss = aggregate(per_token, mask, aggregation)
    real, ratio = mask.bool(), ratio.detach()
    stats = {
        "clip_fraction": float((clipped < unclipped).detach()[real].float().mean()) if real.any() else 0.0,
        "kl": float(kl.detach()[real].mean()) if kl is not None and real.any() else 0.0,
        "ratio_mean": float(ratio[real].mean()) if real.any() else 1.0,
    }
    return loss, stats
