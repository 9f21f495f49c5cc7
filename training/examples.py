"""What a tokenized example is, and the counts of a tokenized split: the shapes tokens.py builds, the token
cache stores and the batches read, in a module of its own that imports nothing heavy (the cache is read on
every validate, which must not wait for torch)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Token lists, plus (DPO) the reference log-probs of a pair as two floats: "ref_logps" = [chosen, rejected].
Example = dict[str, list[Any]]
# The label of a token the loss skips (PyTorch cross-entropy's ignore_index).
IGNORE = -100


@dataclass
class TokenStats:
    """What tokenizing a split gave: kept with its examples in the cache entry."""

    num_rows: int = 0
    num_examples: int = 0
    num_tokens: int = 0
    num_loss_tokens: int = 0
    num_truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    max_tokens: int = 0

    def add_pair(self, example: Example) -> None:
        """A preference pair trains on both completions and feeds its prompt twice (once per side)."""
        prompt, chosen, rejected = (len(example[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        self.num_examples += 1
        self.num_tokens += 2 * prompt + chosen + rejected
        self.num_loss_tokens += chosen + rejected
        self.max_tokens = max(self.max_tokens, prompt + max(chosen, rejected))

    def add(self, example: Example) -> None:
        self.num_examples += 1
        self.num_tokens += len(example["input_ids"])
        labels = example.get("labels")
        self.num_loss_tokens += len(labels) - labels.count(IGNORE) if labels is not None else len(example["input_ids"])
        self.max_tokens = max(self.max_tokens, len(example["input_ids"]))

    def merge(self, other: TokenStats) -> None:
        """Add the counts of another part of the same split (rows included)."""
        self.num_rows += other.num_rows
        self.num_examples += other.num_examples
        self.num_tokens += other.num_tokens
        self.num_loss_tokens += other.num_loss_tokens
        self.num_truncated += other.num_truncated
        self.dropped.update(other.dropped)
        self.max_tokens = max(self.max_tokens, other.max_tokens)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TokenStats:
        """The inverse of as_dict (a token cache entry's stats)."""
        names = ("rows", "examples", "tokens", "loss_tokens", "truncated", "max_tokens")
        fields = ("num_rows", "num_examples", "num_tokens", "num_loss_tokens", "num_truncated", "max_tokens")
        return cls(**{f: saved[n] for n, f in zip(names, fields, strict=True)}, dropped=Counter(saved["dropped"]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.num_rows,
            "examples": self.num_examples,
            "tokens": self.num_tokens,
            "loss_tokens": self.num_loss_tokens,
            "truncated": self.num_truncated,
            "dropped": dict(self.dropped),
            "max_tokens": self.max_tokens,
        }
