"""Forward passes that produce losses, shared by the training loop and the before/after evaluation."""

from __future__ import annotations

from typing import Any

from training.batches import apply_mlm_masking, collate
from training.config import HoneConfig
from training.losses import causal_lm_loss_sum, masked_lm_loss_sum
from training.tokens import Example


def forward_loss_sum(model: Any, batch: dict[str, Any], kind: str) -> tuple[Any, Any]:
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if kind == "masked":
        return masked_lm_loss_sum(model(**inputs).logits, labels)
    # No KV cache: transformers only builds the block-diagonal mask of packed rows when there is none.
    return causal_lm_loss_sum(model(**inputs, use_cache=False).logits, labels)


def summed_loss(model: Any, examples: list[Example], tokenizer: Any, cfg: HoneConfig, kind: str, seed: int) -> tuple[float, int]:
    """Summed held-out loss and target-token count, without gradients. Masked-LM masks are seeded by
    `seed` and the batch's position, so the same examples always get the same masks."""
    import torch

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
