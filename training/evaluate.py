"""The before/after evaluation: the same function scores the base model and the exported one.

pretrain: held-out `loss` and `perplexity` (for masked LMs, over a fixed, seeded masking).
sft:      held-out `loss` on completion tokens, and `exact_match` of greedy generations.
"""

from __future__ import annotations

import math
from typing import Any

from training.config import HoneConfig
from training.data import Row
from training.forward import summed_loss
from training.tokens import Example, generation_prompt, reference_completion


def evaluate_model(
    cfg: HoneConfig, model_dir: str, kind: str, examples: list[Example], rows: list[Row], fmt: str
) -> dict[str, float]:
    import torch

    from training.models import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, model_dir)
    model = load_model(cfg.model, model_dir, kind).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    loss = heldout_loss(model, tokenizer, examples, cfg, kind)
    if cfg.mode == "pretrain":
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return {"loss": loss, "exact_match": exact_match(model, tokenizer, rows, fmt, cfg)}


def heldout_loss(model: Any, tokenizer: Any, examples: list[Example], cfg: HoneConfig, kind: str) -> float:
    total, count = summed_loss(model, examples, tokenizer, cfg, kind, seed=cfg.seed)
    return total / max(count, 1)


def normalize(text: str) -> str:
    return " ".join(text.split()).strip()


def exact_match(model: Any, tokenizer: Any, rows: list[Row], fmt: str, cfg: HoneConfig) -> float:
    """Share of held-out prompts whose greedy completion equals the reference (whitespace-normalized)."""
    import torch

    rows = rows[: cfg.eval.max_samples] if cfg.eval.max_samples else rows
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    hits = 0
    for start in range(0, len(rows), cfg.eval.batch_size):
        chunk = rows[start : start + cfg.eval.batch_size]
        prompts = [generation_prompt(r, fmt, tokenizer) for r in chunk]
        special = not tokenizer.chat_template or fmt == "prompt_completion"  # as the training rows were tokenized
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=special).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=cfg.eval.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        completions = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += sum(
            normalize(c) == normalize(reference_completion(r, fmt, tokenizer)) for c, r in zip(completions, chunk, strict=True)
        )
    return hits / max(len(rows), 1)
