"""Forward passes that produce losses, shared by the training loop and the before/after evaluation."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch

from hone.training.batches import apply_mlm_masking, collate, collate_pairs
from hone.training.config import HoneConfig
from hone.training.data import PREFERENCE_MODES
from hone.training.losses import (
    IGNORE,
    bradley_terry_loss,
    causal_lm_loss_sum,
    completion_logps,
    dpo_loss,
    dpo_margin,
    kept_lm_loss_sum,
    masked_lm_loss_sum,
    target_positions,
)
from hone.training.models import hf_model
from hone.training.tokens import Example


def forward_loss_sum(model: Any, batch: dict[str, Any], kind: str, label_smoothing: float = 0.0) -> tuple[Any, Any]:
    """(summed loss, target count) of a token batch; `label_smoothing` only for training, held-out losses
    are plain cross-entropy."""
    labels = batch["labels"]
    inputs = _model_inputs(model, batch)
    if kind == "masked":
        return masked_lm_loss_sum(model(**inputs).logits, labels, label_smoothing)
    # No KV cache: transformers only builds the block-diagonal mask of packed rows when there is none.
    if not takes_logits_to_keep(model):
        return causal_lm_loss_sum(model(**inputs, use_cache=False).logits, labels, label_smoothing)
    # Project to the vocabulary only where a target is predicted: the same loss, and an sft step of
    # SmolLM2-135M on the handbook's short answers takes 0.88x the time on 2 CPU cores (bench/sft_logits.py).
    positions = target_positions(labels)
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits
    return kept_lm_loss_sum(logits, labels, positions, label_smoothing)


def _model_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 4:
        return inputs
    # A 4D mask (rows packed behind a shared prefix) goes to the attention as it is: boolean for sdpa,
    # added to the scores for eager; flash-attention kernels take no such mask.
    attention = getattr(hf_model(model).config, "_attn_implementation", None) or "sdpa"
    if attention == "eager":
        inputs["attention_mask"] = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif attention != "sdpa":
        raise ValueError(
            f"packed rows that share a prompt prefix need sdpa or eager attention, not {attention}: set data.share_prefix=false"
        )
    return inputs


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the Hugging Face model under DeepSpeed's and peft's wrappers accepts `logits_to_keep`
    (recent transformers causal LMs do; older architectures such as GPT-2 may not)."""
    return _forward_takes(type(hf_model(model)).forward, "logits_to_keep")


@cache
def _forward_takes(forward: Any, name: str) -> bool:
    return name in inspect.signature(forward).parameters


def step_loss_sum(model: Any, batch: dict[str, Any], kind: str, cfg: HoneConfig) -> tuple[Any, Any]:
    """The training loss of one micro-batch as (sum, count): over target tokens for pretrain and sft,
    over pairs for dpo and reward, so `mean_loss` and the cross-rank averages work the same for all."""
    if cfg.mode not in PREFERENCE_MODES:
        return forward_loss_sum(model, batch, kind, cfg.train.label_smoothing)
    losses, _ = pair_losses(model, batch, cfg.mode, cfg.dpo.beta)
    weights = batch["pair_mask"]
    return (losses * weights).sum(), weights.sum()


def step_target_count(batch: dict[str, Any], kind: str, mode: str) -> int:
    """How many targets `step_loss_sum` will count in this micro-batch, known before its forward pass:
    next-token targets for a causal LM, masked tokens for a masked one, pairs for dpo and reward."""
    if mode in PREFERENCE_MODES:
        return int(batch["pair_mask"].sum())
    labels = batch["labels"] if kind == "masked" else batch["labels"][:, 1:]
    return int((labels != IGNORE).sum())


def pair_scores(model: Any, batch: dict[str, Any], mode: str) -> tuple[Any, Any]:
    """(chosen, rejected) scores of a collate_pairs batch: the reward model's scalar for reward, the summed
    completion log-probs for dpo. One forward pass scores both halves."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if mode == "reward":
        # The sequence-classification head scores the last non-pad token (config.pad_token_id finds it).
        scores = model(**inputs).logits.squeeze(-1).float()
    else:
        scores = completion_logps(model(**inputs, use_cache=False).logits, batch["input_ids"], batch["completion_mask"])
    chosen, rejected = scores.chunk(2, dim=0)
    return chosen, rejected


def pair_losses(model: Any, batch: dict[str, Any], mode: str, beta: float) -> tuple[Any, Any]:
    """Per-pair losses and margins: Bradley-Terry on reward differences, or sigmoid DPO on the implicit
    reward margin against the precomputed reference log-probs in batch["ref_logps"]."""
    chosen, rejected = pair_scores(model, batch, mode)
    if mode == "reward":
        return bradley_terry_loss(chosen, rejected), chosen - rejected
    ref = batch["ref_logps"]
    margin = dpo_margin(chosen, rejected, ref[:, 0], ref[:, 1], beta)
    return dpo_loss(margin), margin


def summed_pair_stats(model: Any, examples: list[Example], tokenizer: Any, cfg: HoneConfig) -> dict[str, float]:
    """Held-out sums over pairs, without gradients: loss, pairs ranked right (margin > 0), margin, count."""
    import torch

    totals = {"loss": 0.0, "correct": 0.0, "margin": 0.0, "count": 0.0}
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), cfg.eval.batch_size):
            batch = collate_pairs(examples[start : start + cfg.eval.batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            losses, margins = pair_losses(model, batch, cfg.mode, cfg.dpo.beta)
            weights = batch["pair_mask"]
            totals["loss"] += float((losses * weights).sum())
            totals["correct"] += float(((margins > 0).float() * weights).sum())
            totals["margin"] += float((margins * weights).sum())
            totals["count"] += float(weights.sum())
    return totals


def summed_loss(model: Any, examples: list[Example], tokenizer: Any, cfg: HoneConfig, kind: str, seed: int) -> tuple[float, int]:
    """Summed held-out loss and target count (tokens, or pairs for dpo/reward), without gradients.
    Masked-LM masks are seeded by `seed` and the batch's position, so the same examples always get the
    same masks."""
    import torch

    if cfg.mode in PREFERENCE_MODES:
        totals = summed_pair_stats(model, examples, tokenizer, cfg)
        return totals["loss"], int(totals["count"])
    total, count = 0.0, 0
    size = cfg.eval.batch_size
    with torch.no_grad():
        for start in range(0, len(examples), size):
            batch = collate(examples[start : start + size], tokenizer.pad_token_id)
            batch.pop("num_real_tokens")
            if kind == "masked":
                batch = apply_mlm_masking(batch, cfg.data.mlm_probability, tokenizer.mask_token_id, len(tokenizer), seed + start)
            device = next(model.parameters()).device
            loss_sum, n = forward_loss_sum(model, {k: v.to(device) for k, v in batch.items()}, kind)
            total += float(loss_sum)
            count += int(n)
    return total, count
