"""Replay against forgetting: the model being tuned answers general instructions before it learns
anything, and those answers go back into its training data, so tuning on the documents does not pull
its answers to everything else along (self-distillation; Yang et al., 2024, "Self-Distillation Bridges
Distribution Gap in Language Model Fine-Tuning"). The answers are the model's own, right or wrong: the
point is to keep its behaviour, not to teach it.
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


def replay_keys(prompts: list[str], model: str, max_new_tokens: int) -> list[str]:
    """Cache keys of the model's greedy answers: a new model, prompt or length asks again."""
    who = f"replay|{model}|greedy|max_new_tokens={max_new_tokens}"
    return [reply_key("", who, p) for p in prompts]


@dataclass(frozen=True)
class ReplayRequest:
    prompt: str
    key: str


def replay_requests(prompts: list[str], model: str, max_new_tokens: int) -> list[ReplayRequest]:
    """One request per prompt, for hone.synth.step's `missing` and `fetch`."""
    keys = replay_keys(prompts, model, max_new_tokens)
    return [ReplayRequest(p, k) for p, k in zip(prompts, keys, strict=True)]


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
