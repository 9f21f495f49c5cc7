"""Which examples each rank sees at each step, and how they become padded tensors.

The order is a pure function of (seed, epoch, step, micro-step, rank): every example is seen once per
epoch across all workers, and a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from hone.training.ds_config import steps_per_epoch
from hone.training.losses import IGNORE, mask_tokens
from hone.training.tokens import Example


@lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_examples, generator=generator).tolist())


def example_indices(
    step: int, micro: int, rank: int, num_examples: int, seed: int, micro_batch: int, grad_accum: int, world_size: int
) -> list[int]:
    global_size = micro_batch * grad_accum * world_size
    epoch, position = divmod(step, steps_per_epoch(num_examples, global_size))
    order = _epoch_order(num_examples, seed, epoch)
    start = position * global_size + (micro * world_size + rank) * micro_batch
    return list(order[start : start + micro_batch])


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Packed examples get no attention mask: their restarting
    position_ids keep sequences apart, and the padding becomes one more (ignored) sequence."""
    width = max(len(e["input_ids"]) for e in examples)
    packed = "position_ids" in examples[0]
    input_ids, labels, attention, positions, segments = [], [], [], [], []
    for e in examples:
        pad = width - len(e["input_ids"])
        input_ids.append(e["input_ids"] + [pad_id] * pad)
        if "labels" in e:
            labels.append(e["labels"] + [IGNORE] * pad)
        if "special_mask" in e:
            labels.append(e["special_mask"] + [1] * pad)  # padding is never masked for MLM
        attention.append([1] * len(e["input_ids"]) + [0] * pad)
        if packed:
            positions.append(e["position_ids"] + list(range(pad)))
        if "segment_ids" in e:
            segments.append(e["segment_ids"] + [-1] * pad)
    batch = {"input_ids": torch.tensor(input_ids)}
    if packed:
        batch["position_ids"] = torch.tensor(positions)
    if segments:
        batch["attention_mask"] = shared_prefix_mask(torch.tensor(segments))
    elif not packed:
        batch["attention_mask"] = torch.tensor(attention)
    key = "special_mask" if "special_mask" in examples[0] else "labels"
    batch[key] = torch.tensor(labels)
    batch["num_real_tokens"] = torch.tensor(sum(len(e["input_ids"]) for e in examples))
    return batch


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """The 4D boolean attention mask (batch, 1, query, key) of rows packed behind a shared prefix
    (tokens.pack_sharing_prefix): causal, and a token sees its own segment and the prefix (segment 0).
    Padding (-1) is a segment of its own, so no query is left with nothing to attend to."""
    query, key = segments[:, :, None], segments[:, None, :]
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return (causal & ((query == key) | (key == 0)))[:, None]


def apply_mlm_masking(
    batch: dict[str, torch.Tensor], probability: float, mask_token_id: int, vocab_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Masked-LM targets for a collated batch; the seed makes the masking reproducible."""
    generator = torch.Generator().manual_seed(seed)
    maskable = batch.pop("special_mask") == 0
    batch["input_ids"], batch["labels"] = mask_tokens(
        batch["input_ids"], maskable, probability, mask_token_id, vocab_size, generator
    )
    return batch


def collate_pairs(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Preference pairs as one right-padded batch: rows [0, n) are prompt+chosen, rows [n, 2n) the same
    prompts + rejected (TRL's DataCollatorForPreference layout). `completion_mask` marks the completion
    tokens; `pair_mask` is 0 for a pair with "pair_weight" [0], which eval pads short shards with."""
    sides = [[e["prompt_ids"] + e[side] for e in examples] for side in ("chosen_ids", "rejected_ids")]
    masks = [[[0] * len(e["prompt_ids"]) + [1] * len(e[side]) for e in examples] for side in ("chosen_ids", "rejected_ids")]
    sequences, completion = sides[0] + sides[1], masks[0] + masks[1]
    width = max(len(s) for s in sequences)
    batch = {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in completion]),
        "pair_mask": torch.tensor([float(e.get("pair_weight", [1.0])[0]) for e in examples]),
        "num_real_tokens": torch.tensor(sum(len(s) for s in sequences)),
    }
    if "ref_logps" in examples[0]:
        batch["ref_logps"] = torch.tensor([e["ref_logps"] for e in examples], dtype=torch.float32)
    return batch
