"""Everything an RL run checks before any actor starts: the model, the prompts, the rewards and the steps.

A bad reward function (does not import, wrong signature), prompts missing a field a reward reads, or a
reward model that cannot be used all fail here, with the file and row named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hone.rl.rewards import fields_needed, import_function, reward_name
from hone.training.config import HoneConfig
from hone.training.data import DataError, Row, load_sources, split_and_mix


@dataclass
class PreparedRl:
    resolved_model: str
    train_rows: list[Row]
    eval_rows: list[Row]
    train_prompts: list[str]
    eval_prompts: list[str]
    add_special_tokens: bool
    total_steps: int
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.resolved_model,
            "train_prompts": len(self.train_prompts),
            "eval_prompts": len(self.eval_prompts),
            "dropped_too_long": self.dropped,
            "total_steps": self.total_steps,
        }


def prepare_rl(cfg: HoneConfig) -> PreparedRl:
    from hone.training.models import check_max_seq_len, load_tokenizer, objective, resolve_source

    parts = load_sources(cfg.data.train, cfg.data.columns)  # first: a broken file is reported before the model is loaded
    rows = [row for part in parts for row in part]
    resolved = resolve_source(cfg.model.source)
    check_max_seq_len(cfg.model, resolved, cfg.data.max_seq_len)
    if objective(cfg.model, resolved) != "causal":
        raise DataError("mode rl needs a causal (decoder) model that can generate, but model.source is an encoder")
    tokenizer = load_tokenizer(cfg.model, resolved, cfg.data.chat_template)
    for row in rows:
        _check_prompt_row(row, tokenizer)
    train_rows, eval_rows = split_and_mix(parts, cfg.data, cfg.seed)
    for row in eval_rows:
        _check_prompt_row(row, tokenizer)
    check_rewards(cfg, train_rows + eval_rows)
    budget = cfg.data.max_seq_len - cfg.rl.generation.max_new_tokens
    train_rows, train_prompts, dropped_train = _render(train_rows, tokenizer, budget)
    eval_rows, eval_prompts, dropped_eval = _render(eval_rows, tokenizer, budget)
    if not train_prompts or not eval_prompts:
        raise DataError(
            f"every {'training' if not train_prompts else 'held-out'} prompt is longer than data.max_seq_len "
            f"({cfg.data.max_seq_len}) minus rl.generation.max_new_tokens ({cfg.rl.generation.max_new_tokens}) = {budget} "
            "tokens: raise data.max_seq_len, lower max_new_tokens or shorten the prompts"
        )
    if cfg.eval.max_samples:
        eval_rows, eval_prompts = eval_rows[: cfg.eval.max_samples], eval_prompts[: cfg.eval.max_samples]
    steps_per_epoch = max(1, math.ceil(len(train_prompts) / cfg.rl.prompts_per_step))
    total = cfg.train.max_steps or steps_per_epoch * cfg.train.num_epochs
    special = "messages" not in rows[0] or not tokenizer.chat_template
    dropped = {"train": dropped_train, "eval": dropped_eval}
    return PreparedRl(resolved, train_rows, eval_rows, train_prompts, eval_prompts, special, total, dropped)


def _check_prompt_row(row: Row, tokenizer: Any) -> None:
    where = row["_source"]
    if isinstance(row.get("prompt"), str):
        return
    messages = row.get("messages")
    if messages is None:
        raise DataError(f"{where}: an RL prompt row needs a 'prompt' string or chat 'messages'; this row has {sorted(row)}")
    ok = isinstance(messages, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages)
    if not ok or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}} objects")
    if not tokenizer.chat_template:
        raise DataError(f"{where}: chat 'messages' need a tokenizer with a chat template; use 'prompt' strings for this model")


def prompt_text(row: Row, tokenizer: Any) -> str:
    """The text the policy continues: the prompt string, or the chat up to the assistant's turn."""
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    messages = list(row["messages"])
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]  # a trailing answer is the reference, not part of the prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _render(rows: list[Row], tokenizer: Any, budget: int) -> tuple[list[Row], list[str], int]:
    kept_rows, prompts = [], []
    for row in rows:
        text = prompt_text(row, tokenizer)
        if len(tokenizer(text)["input_ids"]) <= budget:
            kept_rows.append(row)
            prompts.append(text)
    return kept_rows, prompts, len(rows) - len(kept_rows)


def check_rewards(cfg: HoneConfig, rows: list[Row]) -> None:
    """Import every reward function, check every reward model, and check the prompt rows hold the fields
    each reward reads."""
    for i, spec in enumerate(cfg.rl.rewards):
        key = f"rl.rewards[{i}]"
        fn = import_function(spec, key, [spec.path] if spec.path else []) if spec.type == "function" else None
        if spec.type == "model":
            from hone.rl.reward_model import check_reward_model  # torch: only a model reward pays for it

            check_reward_model(spec.source, key)
        for name in fields_needed(spec, fn):
            missing = next((r for r in rows if name not in r), None)
            if missing is not None:
                raise DataError(
                    f"{missing['_source']}: reward {reward_name(spec)!r} ({key}) reads field {name!r}, which this prompt "
                    f"row lacks; add '{name}' to every prompt row"
                    + ("" if spec.type == "function" else f", or set {key}.field to the field that holds the answer")
                )
    names = [reward_name(spec) for spec in cfg.rl.rewards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(
            f"rl.rewards: more than one reward is named {twice[0]!r}; give each one its own `name:` so their metrics stay apart"
        )
