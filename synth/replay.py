"""Replay against forgetting: the model being tuned answers general instructions before it learns
anything, and those answers go back into its training data, so tuning on the documents does not pull
its answers to everything else along (self-distillation; Yang et al., 2024, "Self-Distillation Bridges
Distribution Gap in Language Model Fine-Tuning"). The answers are the model's own, right or wrong: the
point is to keep its behaviour, not to teach it.

Greedy answers (the default) keep what the model says; answers sampled at temperature 1 (several per
prompt: synth.replay_temperature, synth.replay_samples) are draws from its whole distribution, so
training on them pulls the tuned model's probabilities back toward the untuned model's (the cross-entropy
on them is, in expectation, the KL divergence from it plus a constant) instead of only its top choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.synth.cache import reply_key
from hone.training.data import DataError, load_rows

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def read_replay_prompts(path: str) -> list[str]:
    """The "prompt" of every row of a jsonl file, each checked (a DataError names the file and row)."""
    prompts = []
    for i, row in enumerate(load_rows([path])):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"synth.replay_prompts {path} row {i + 1}: needs a non-empty 'prompt' string")
        prompts.append(prompt.strip())
    if not prompts:
        raise DataError(f'synth.replay_prompts {path}: holds no rows; give one general instruction per line as {{"prompt": ...}}')
    return prompts


@dataclass(frozen=True)
class ReplayRequest:
    prompt: str
    key: str


def replay_requests(
    prompts: list[str], model: str, max_new_tokens: int, temperature: float = 0.0, samples: int = 1
) -> list[ReplayRequest]:
    """`samples` requests per prompt, for hone.synth.step's `missing` and `fetch`, keyed for the cache: a
    new model, prompt, length, temperature or sample number asks again."""
    decoding = "greedy" if temperature == 0 else f"temperature={temperature}"
    who = f"replay|{model}|{decoding}|max_new_tokens={max_new_tokens}"
    return [ReplayRequest(p, reply_key("", who, p, sample)) for p in prompts for sample in range(samples)]


def whole_sentences(text: str) -> str:
    """`text` up to its last complete sentence: an answer cut off at max_new_tokens would otherwise teach
    the model to stop mid-sentence. Text with no sentence end is kept as it is."""
    text = text.strip()
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else text


def replay_rows(prompts: list[str], answers: list[str], source: str) -> list[dict[str, Any]]:
    """Chat rows for sft; an empty answer is left out (nothing to keep)."""
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        kept = whole_sentences(answer)
        if kept:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": kept}]
            rows.append({"messages": messages, "source": Path(source).name, "kind": "replay"})
    return rows
