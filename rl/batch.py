"""The one batch type that crosses every actor boundary in the RL loop.

Prompts are left-padded and completions right-padded, so `cat(prompt_ids, completion_ids)` is a batch
the model reads left to right and the completion starts at the same column in every row. Rollout fills
the token fields and `rollout_logp`; reward scoring fills `rewards`; the controller fills `advantages`;
the reference fills `ref_logp`. Samples of one prompt are adjacent (group by group).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the first EOS
    rollout_logp: torch.Tensor  # [N, C] log-probs of the sampled tokens under the rollout weights
    prompts: list[str]  # the prompt text of each sample
    completions: list[str]  # the decoded completion of each sample
    rows: list[dict[str, Any]]  # the prompt row of each sample (its fields go to the reward functions)
    rewards: torch.Tensor | None = None  # [N]
    reward_parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], unweighted
    valid: torch.Tensor | None = None  # [N] bool: False for samples whose reward was skipped
    advantages: torch.Tensor | None = None  # [N]
    ref_logp: torch.Tensor | None = None  # [N, C]

    def __len__(self) -> int:
        return self.prompt_ids.size(0)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and position_ids as generate() saw them (positions skip left padding)."""
        ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        mask = torch.cat([self.prompt_mask, torch.ones_like(self.completion_mask)], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}

    def loss_mask(self) -> torch.Tensor:
        """completion_mask with skipped samples zeroed, so they carry no gradient."""
        if self.valid is None:
            return self.completion_mask
        return self.completion_mask * self.valid.unsqueeze(1).to(self.completion_mask.dtype)

    def split(self, num_parts: int) -> list[RolloutBatch]:
        """Equal contiguous shards (the caller guarantees divisibility)."""
        size = len(self) // num_parts
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(num_parts)]

    def select(self, rows: slice) -> RolloutBatch:
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                values[f.name] = {k: v[rows] for k, v in value.items()}
            elif value is not None:
                values[f.name] = value[rows]
        return replace(self, **values)


def concat(batches: list[RolloutBatch]) -> RolloutBatch:
    """Join shards from several rollout actors, re-padding prompts on the left and completions on the right."""
    width_p = max(b.prompt_ids.size(1) for b in batches)
    width_c = max(b.completion_ids.size(1) for b in batches)
    out: dict[str, Any] = {
        "prompt_ids": torch.cat([_pad(b.prompt_ids, width_p, left=True) for b in batches]),
        "prompt_mask": torch.cat([_pad(b.prompt_mask, width_p, left=True) for b in batches]),
        "completion_ids": torch.cat([_pad(b.completion_ids, width_c) for b in batches]),
        "completion_mask": torch.cat([_pad(b.completion_mask, width_c) for b in batches]),
        "rollout_logp": torch.cat([_pad(b.rollout_logp, width_c) for b in batches]),
        "prompts": [p for b in batches for p in b.prompts],
        "completions": [c for b in batches for c in b.completions],
        "rows": [r for b in batches for r in b.rows],
    }
    for name in ("rewards", "valid", "advantages"):
        if all(getattr(b, name) is not None for b in batches):
            out[name] = torch.cat([getattr(b, name) for b in batches])
    if all(b.ref_logp is not None for b in batches):
        out["ref_logp"] = torch.cat([_pad(b.ref_logp, width_c) for b in batches])  # type: ignore[arg-type]
    if batches[0].reward_parts:
        out["reward_parts"] = {k: torch.cat([b.reward_parts[k] for b in batches]) for k in batches[0].reward_parts}
    return RolloutBatch(**out)


def _pad(tensor: torch.Tensor, width: int, left: bool = False) -> torch.Tensor:
    # Pad values never matter: masks are 0 there, and pad ids are never a target.
    missing = width - tensor.size(1)
    if missing == 0:
        return tensor
    pad = torch.zeros(tensor.size(0), missing, dtype=tensor.dtype)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)
