"""Per-token log-probabilities of completions under a model: the one forward pass rollout, reference and
policy share, so their numbers are comparable (same positions, same temperature)."""

from __future__ import annotations

from typing import Any

import torch

from hone.rl.batch import RolloutBatch


def token_logp(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(target) under softmax(logits / temperature): the distribution sampling drew from."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.detach().float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def completion_logits(model: Any, batch: RolloutBatch, device: Any) -> torch.Tensor:
    """Logits that predict each completion token: [N, C, V]."""
    inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
    logits = model(**inputs, use_cache=False).logits
    start = batch.prompt_ids.size(1)
    return logits[:, start - 1 : -1, :]


def completion_logp(model: Any, batch: RolloutBatch, temperature: float, device: Any, chunk: int) -> torch.Tensor:
    """Log-probs without gradient, `chunk` samples per forward pass (reference and diagnostics)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(batch), chunk):
            part = batch.select(slice(start, start + chunk))
            logits = completion_logits(model, part, device)
            parts.append(token_logp(logits, part.completion_ids.to(device), temperature).cpu())
    return torch.cat(parts)


def completion_mask(completion_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 on every token up to and including the first EOS (generate pads finished rows after it)."""
    if eos_id is None:
        return torch.ones_like(completion_ids)
    is_eos = completion_ids == eos_id
    after_first = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_first).long()
