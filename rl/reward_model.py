"""A sequence-classification checkpoint as a reward: the score of prompt + completion, one number each.

A `mode: reward` export is such a checkpoint. It reads text, so its tokenizer may differ from the
policy's; it must match the reward model itself, which is checked when it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hone.rl.rewards import RewardError


def check_reward_model(source: str, key: str) -> None:
    """Fail before any actor starts if the folder is not a usable reward model."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(source)
    if not (path / "config.json").exists():
        raise RewardError(f"{key}.source={source!r} is not a model directory (no config.json); train one with mode: reward")
    config = AutoConfig.from_pretrained(source)
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise RewardError(
            f"{key}.source={source!r} is a {config.architectures} model, not a sequence classifier; "
            "use the model/ export of a mode: reward run"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise RewardError(f"{key}.source={source!r} has {config.num_labels} labels; a reward model has exactly 1")
    tokenizer = AutoTokenizer.from_pretrained(source)
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RewardError(
            f"{key}.source={source!r}: its tokenizer has {len(tokenizer)} tokens but the model's embeddings hold {vocab}, "
            "so the tokenizer does not belong to this model; save the tokenizer the reward model was trained with"
        )


class RewardModel:
    def __init__(self, source: str, batch_size: int) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32).eval()
        # The head reads the last non-pad token, which it finds through pad_token_id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def __call__(self, prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
        scores: list[float] = []
        # Reward models learn on prompt + reply + EOS (TRL's convention, and hone's mode: reward) and read
        # the score at the last token, so the completion is scored the same way.
        eos = self.tokenizer.eos_token or ""
        texts = [p + c + ("" if c.endswith(eos) else eos) for p, c in zip(prompts, completions, strict=True)]
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                scores += self.model(**enc).logits[:, 0].float().tolist()
        return scores
