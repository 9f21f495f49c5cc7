"""One rank's share of an evaluation, and the collectives that put the shares back together.

Evaluation on a worker group (the in-training held-out loss, and under ZeRO-3 the before/after evaluation)
splits its examples and prompts over the ranks. Every rank must run the same number of forward passes,
because ZeRO-3 gathers each layer's parameters collectively: short shares are padded with items that
count for nothing. With one rank (`ALONE`) nothing is split or communicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hone.training.examples import IGNORE, Example

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def take(self, items: Sequence[T], filler: T) -> list[T]:
        """Items rank, rank + world, ...; padded with `filler` to the longest rank's count."""
        mine = list(items[self.rank :: self.world])
        return mine + [filler] * (-(-len(items) // self.world) - len(mine))

    def examples(self, examples: Sequence[Example]) -> list[Example]:
        """`take` for tokenized examples, padded with blanks."""
        return self.take(examples, blank(examples[0])) if len(examples) else []

    def sum(self, *values: float) -> list[float]:
        """The values summed over the ranks (float64, so counts stay exact)."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, mine: list[T], total: int) -> list[T]:
        """Every rank's `take` results put back in the items' order (padding dropped), on every rank."""
        if self.world == 1:
            return mine[:total]
        import torch.distributed as dist

        shares: list[Any] = [None] * self.world
        dist.all_gather_object(shares, mine)
        return interleave(shares, total)


def interleave(shares: list[list[T]], total: int) -> list[T]:
    """The inverse of every rank's `take`: item i was rank i % world's (i // world)-th."""
    return [shares[i % len(shares)][i // len(shares)] for i in range(total)]


ALONE = Shard()


def blank(example: Example) -> Example:
    """A copy of `example` that the losses ignore, to even out shards."""
    if "prompt_ids" in example:
        return {**example, "pair_weight": [0.0]}
    if "labels" in example:
        return {**example, "labels": [IGNORE] * len(example["input_ids"])}
    return {**example, "special_mask": [1] * len(example["input_ids"])}
