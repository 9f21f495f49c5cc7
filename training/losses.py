"""Pure functions for the math: losses, masking, the LR schedule. No Ray, no process group."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hone.training.examples import IGNORE


def causal_lm_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of target tokens.

    Position t predicts labels[t + 1]; tokens labelled -100 (prompts, padding) count for nothing.
    Returning the sum and the count lets callers average over a batch or over many ranks exactly.
    """
    return masked_lm_loss_sum(logits[:, :-1, :], labels[:, 1:], label_smoothing)


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions t whose next token labels[:, t + 1] is a target in any row of the batch: the only
    places a causal LM's logits are needed. For sft rows that end in a short answer this is a small part
    of the sequence, and the vocabulary projection and its softmax are a large part of a small model's step."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(-1)


def kept_lm_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_lm_loss_sum` for logits computed at `positions` only (logits[:, k] is position positions[k])."""
    return masked_lm_loss_sum(logits, labels[:, positions + 1], label_smoothing)


def masked_lm_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy where labels are not IGNORE, each position predicting its own label: the
    masked-LM loss, and the causal losses above once they have lined logits up with next tokens.

    With `label_smoothing` e the target is (1 - e) on the label plus e spread evenly over the vocabulary,
    so a memorised answer no longer pays for a probability of exactly 1: training with it keeps the model
    from growing overconfident on everything else (train.label_smoothing)."""
    loss_sum = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss_sum, (labels != IGNORE).sum()


def mean_loss(loss_sum: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    return loss_sum / num_tokens.clamp(min=1)


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: pick `probability` of the maskable tokens as targets; of those, 80% become
    [MASK], 10% a random token and 10% stay. Returns (masked input ids, labels with -100 off-target)."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, decay: str, min_ratio: float) -> float:
    """The factor on the base LR after `step` optimizer steps: linear warmup, then the chosen decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


# ----------------------------------------------------------------------------------------------------
# Preference losses. A preference batch stacks its pairs as [all chosen, all rejected], as TRL does, so
# one forward pass scores both halves; `pair_mask` is 1 for real pairs and 0 for eval shard padding.


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's log-probability of its completion: next-token log-probs summed over the tokens
    `completion_mask` marks (TRL's DPO `logps`, no length normalization)."""
    targets = input_ids[:, 1:]
    token_logps = -F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    ).view_as(targets)
    return (token_logps * completion_mask[:, 1:]).sum(dim=1)


def dpo_margin(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The implicit reward margin beta * ((pi_c - ref_c) - (pi_r - ref_r)); 0 while policy == reference."""
    return beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))


def dpo_loss(margin: torch.Tensor) -> torch.Tensor:
    """Per-pair sigmoid DPO loss (TRL's loss_type="sigmoid"): -log sigmoid(margin)."""
    return -F.logsigmoid(margin)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair reward-model loss: -log sigmoid(r_chosen - r_rejected), the chance the chosen one wins."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)
