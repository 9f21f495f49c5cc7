"""Rows to token examples: what the model sees, and which tokens count toward the loss.

An example is a dict of token lists: `input_ids` and `labels` (-100 where the loss ignores a token), plus
`position_ids` when packed. Masked-LM examples carry `special_mask` instead of labels; the masking itself
happens per batch (training/losses.py) so every epoch masks differently but reproducibly.

Supervised rows follow TRL's SFTTrainer conventions exactly (EOS appended to plain completions, the
completion starting where prompt and prompt+completion tokens diverge), so hone's loss matches TRL's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from hone.training.data import DataError, DataWarning, Row
from hone.training.examples import IGNORE, Example, TokenStats


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """TRL's, imported on first use: a training worker imports this module for its types and would pay
    ~1 s at every start for TRL (and the datasets library it pulls in) it never calls."""
    from trl.data_utils import common_prefix_length as trl_common_prefix_length

    return trl_common_prefix_length(a, b)


# ----------------------------------------------------------------------------------------------------
# Supervised: prompt -> completion, loss on the completion only


def prompt_and_completion(row: Row, fmt: str, tokenizer: Any) -> tuple[Any, Any]:
    """The row as (prompt, completion): strings, or message lists for chat data."""
    if fmt == "prompt_completion":
        return row["prompt"], row["completion"]
    if fmt == "instruction":
        request = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        if tokenizer.chat_template:
            return [{"role": "user", "content": request}], [{"role": "assistant", "content": row["output"]}]
        return f"### Instruction:\n{request}\n\n### Response:\n", row["output"]
    if fmt == "messages":
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last], messages[last:]
    raise ValueError(f"format {fmt} has no prompt and completion")


def tokenize_supervised(row: Row, fmt: str, tokenizer: Any) -> Example:
    if fmt == "messages" and not tokenizer.chat_template:
        raise DataError(
            f"{row['_source']}: chat 'messages' need a tokenizer with a chat template, and this model has none; "
            "use prompt/completion rows or a model with a chat template"
        )
    if fmt == "messages":
        return _tokenize_chat(row["messages"], tokenizer, row["_source"])
    prompt, completion = prompt_and_completion(row, fmt, tokenizer)
    if isinstance(prompt, list):
        return _tokenize_chat(prompt + completion, tokenizer, row["_source"])
    eos = tokenizer.eos_token or ""
    if not completion.endswith(eos):
        completion += eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    full_ids = tokenizer(text=prompt + completion)["input_ids"]
    start = common_prefix_length(prompt_ids, full_ids)
    return {"input_ids": full_ids, "labels": [IGNORE] * start + full_ids[start:]}


def _tokenize_chat(messages: list[dict], tokenizer: Any, where: str = "?") -> Example:
    """Render with the model's chat template; every assistant turn is a target (except one marked
    `"weight": 0`, as Axolotl marks turns not to train on), everything else is masked.

    Each assistant turn's tokens are found by rendering the conversation up to it (with the generation
    prompt) and up to its end: the tokens in between are what the assistant said.
    """
    full_ids = _chat_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(full_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _chat_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        start, end = common_prefix_length(before, full_ids), common_prefix_length(upto, full_ids)
        if start < len(before) or end < len(upto):
            # The template renders this turn differently once later turns follow (Qwen3 drops earlier
            # reasoning): the difference would mis-mark it, so the template's own assistant mask is used.
            return _tokenize_chat_by_mask(messages, tokenizer, where)
        labels[start:end] = full_ids[start:end]
        if message.get("tool_calls"):  # checked on the rendered text: decoding ids may not give it back
            shown = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            said = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            _require_rendered_calls(message, said[len(shown) :] if said.startswith(shown) else said, where)
    return {"input_ids": full_ids, "labels": labels}


def _tokenize_chat_by_mask(messages: list[dict], tokenizer: Any, where: str) -> Example:
    """Targets from the chat template's `{% generation %}` markers (transformers' assistant mask): the
    template's own, or the training version TRL keeps of a known family's template (what TRL's SFTTrainer
    trains with; it is prefix-preserving, so earlier turns keep what the model said in them)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not has_generation_markers(template):
        try:
            template = get_training_chat_template(tokenizer)
        except ValueError:
            raise DataError(
                f"{where}: the chat template renders earlier turns differently once later turns follow, so which "
                "tokens are the assistant's cannot be told from it, and TRL has no training version of it: set "
                "data.chat_template to one with {% generation %} markers around assistant content"
            ) from None
    if any(m.get("weight", 1) == 0 for m in messages):
        raise DataError(f"{where}: turns marked weight 0 need a chat template that renders earlier turns unchanged")
    out = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    return {"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, out["assistant_masks"], strict=True)]}


def _require_rendered_calls(message: dict, rendered: str, where: str) -> None:
    """A template that ignores tool_calls would train on an empty turn: refused, with the fix."""
    names = [str((call.get("function") or {}).get("name", "")) for call in message["tool_calls"] if isinstance(call, dict)]
    missing = [name for name in names if name and name not in rendered]
    if missing:
        raise DataError(
            f"{where}: the chat template does not render the assistant's tool_calls ({missing[0]!r} is not in the rendered turn): "
            "set data.chat_template to one that does (for example qwen2_5 or llama3_1), or give the call as text content"
        )


def _chat_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"])


def generation_prompt(row: Row, fmt: str, tokenizer: Any) -> str:
    """The text a model is given at eval time: the prompt exactly as training rendered it."""
    prompt, _ = prompt_and_completion(row, fmt, tokenizer)
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def reference_completion(row: Row, fmt: str, tokenizer: Any) -> str:
    _, completion = prompt_and_completion(row, fmt, tokenizer)
    if isinstance(completion, list):
        return completion[0].get("content") or ""
    return completion


def build_supervised(
    rows: list[Row], fmt: str, tokenizer: Any, max_seq_len: int, train_on_prompt: bool = False
) -> tuple[list[Example], TokenStats]:
    """Tokenize every row; cut ones longer than max_seq_len, drop ones whose prompt alone fills it.
    train_on_prompt: every token is a target (the prompt too), as Axolotl's train_on_inputs."""
    stats = TokenStats(num_rows=len(rows))
    examples = []
    for row in rows:
        example = tokenize_supervised(row, fmt, tokenizer)
        if train_on_prompt:
            example = {**example, "labels": list(example["input_ids"])}
        if len(example["input_ids"]) > max_seq_len:
            example = {k: v[:max_seq_len] for k, v in example.items()}
            if all(t == IGNORE for t in example["labels"]):
                stats.dropped["prompt fills max_seq_len, no completion token left"] += 1
                continue
            stats.num_truncated += 1
        stats.add(example)
        examples.append(example)
    return examples, stats


# ----------------------------------------------------------------------------------------------------
# Preferences: prompt -> chosen / rejected


def preference_texts(row: Row, tokenizer: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) as TRL's DPOTrainer tokenizes them: plain strings get EOS appended to both
    completions; chat pairs are message lists, a plain-string reply becoming one assistant message."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        return prompt, *(c if c.endswith(eos) else c + eos for c in (chosen, rejected))
    if not tokenizer.chat_template:
        raise DataError(
            f"{row['_source']}: chat pairs (a messages list as 'prompt') need a tokenizer with a chat template, and "
            "this model has none; use plain-text prompt/chosen/rejected or a model with a chat template"
        )
    as_messages = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in (chosen, rejected)]
    return prompt, as_messages[0], as_messages[1]


def tokenize_preference(row: Row, tokenizer: Any) -> Example:
    """prompt_ids, chosen_ids, rejected_ids exactly as TRL 1.16's DPOTrainer builds them: the completion
    starts where the tokenized prompt and prompt+completion diverge (for both sides), so prompt_ids +
    chosen_ids is the tokenization of the whole text, and a token merging across the boundary stays whole."""
    prompt, chosen, rejected = preference_texts(row, tokenizer)
    if isinstance(prompt, list):
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        chosen_full = _chat_ids(tokenizer, prompt + chosen, add_generation_prompt=False)
        rejected_full = _chat_ids(tokenizer, prompt + rejected, add_generation_prompt=False)
    else:
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        chosen_full = tokenizer(text=prompt + chosen)["input_ids"]
        rejected_full = tokenizer(text=prompt + rejected)["input_ids"]
    start = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": chosen_full[start:], "rejected_ids": rejected_full[start:]}


def build_preference(rows: list[Row], tokenizer: Any, max_seq_len: int, mode: str) -> tuple[list[Example], TokenStats]:
    """Tokenize every pair. dpo cuts prompt+completion to max_seq_len and drops pairs whose prompt alone
    fills it (TRL's keep_start truncation); reward drops pairs longer than max_seq_len (TRL's RewardTrainer
    filter), since cutting would remove the last token, the one a reward model scores."""
    stats = TokenStats(num_rows=len(rows))
    examples, identical = [], []
    for row in rows:
        example = tokenize_preference(row, tokenizer)
        if example["chosen_ids"] == example["rejected_ids"]:
            identical.append(row["_source"])
        example, why = _fit_pair(example, max_seq_len, mode)
        if why == "dropped":
            stats.dropped[_PAIR_DROP_REASON[mode]] += 1
            continue
        stats.num_truncated += why == "truncated"
        stats.add_pair(example)
        examples.append(example)
    if identical:
        warnings.warn(
            f"{identical[0]}: chosen and rejected are identical in {len(identical)} pair(s) (first here); such a "
            "pair's loss is a constant with no gradient, so it teaches nothing: fix or remove these rows",
            DataWarning,
            stacklevel=2,
        )
    return examples, stats


_PAIR_DROP_REASON = {
    "dpo": "prompt fills max_seq_len, no completion token left",
    "reward": "prompt + chosen or rejected longer than max_seq_len",
}


def _fit_pair(example: Example, max_seq_len: int, mode: str) -> tuple[Example, str]:
    prompt = len(example["prompt_ids"])
    longest = prompt + max(len(example["chosen_ids"]), len(example["rejected_ids"]))
    if longest <= max_seq_len:
        return example, "kept"
    if mode == "reward" or prompt >= max_seq_len:
        return example, "dropped"
    room = max_seq_len - prompt
    cut = {**example, "chosen_ids": example["chosen_ids"][:room], "rejected_ids": example["rejected_ids"][:room]}
    return cut, "truncated"


# ----------------------------------------------------------------------------------------------------
# Self-supervised: plain text


def build_pretrain(rows: list[Row], tokenizer: Any, max_seq_len: int, masked: bool) -> tuple[list[Example], TokenStats]:
    """Tokenize each document and split it into max_seq_len pieces, so no text is thrown away."""
    stats = TokenStats(num_rows=len(rows))
    return [e for batch in pretrain_batches(rows, tokenizer, max_seq_len, masked, stats) for e in batch], stats


PRETRAIN_BATCH_ROWS = 64  # documents per tokenizer call: the fast tokenizer spreads a batch over the cores


def pretrain_batches(
    rows: list[Row], tokenizer: Any, max_seq_len: int, masked: bool, stats: TokenStats
) -> Iterator[list[Example]]:
    """build_pretrain's examples a batch of documents at a time (counted into `stats` as they come), so a
    corpus is never held as token lists whole: the token cache writes each batch and lets it go."""
    eos = tokenizer.eos_token_id if not masked else None
    for start in range(0, len(rows), PRETRAIN_BATCH_ROWS):
        texts = [row["text"] for row in rows[start : start + PRETRAIN_BATCH_ROWS]]
        batch: list[Example] = []
        for ids in _token_ids(tokenizer, texts, masked):
            if eos is not None:
                ids.append(eos)
            if len(ids) < 2:
                stats.dropped["text shorter than 2 tokens"] += 1
                continue
            if len(ids) > max_seq_len:
                stats.num_truncated += 1  # counted as "split", nothing is lost
            for piece_start in range(0, len(ids), max_seq_len):
                piece = ids[piece_start : piece_start + max_seq_len]
                if len(piece) < 2:
                    continue
                example = _masked_example(piece, tokenizer) if masked else {"input_ids": piece, "labels": list(piece)}
                stats.add(example)
                batch.append(example)
        yield batch


def _token_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """The token ids of each text, as `tokenizer(text=texts)` gives them. A fast tokenizer's Rust core is
    called directly without the character offsets transformers asks it for: ~2x the tokens/s on 2 cores."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(text=texts, add_special_tokens=special)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=special)]


def _masked_example(ids: list[int], tokenizer: Any) -> Example:
    special = set(tokenizer.all_special_ids)
    return {"input_ids": ids, "special_mask": [int(t in special) for t in ids]}


# ----------------------------------------------------------------------------------------------------
# Packing


# A prefix shorter than this is packed as part of each sequence: too little to gain from sharing it.
MIN_SHARED_PREFIX = 8


def pack(examples: list[Example], max_seq_len: int, share_prefix: bool = True) -> list[Example]:
    """Best-fit-decreasing packing with TRL's `pack_dataset`; position_ids restart at each sequence.

    Restarting position_ids (with no attention mask) is what tells transformers to keep packed sequences
    from attending to each other, so packing changes speed, not the math. When every example starts with
    the same prompt tokens (a chat template's system prompt), they are packed once per row instead (see
    `pack_sharing_prefix`; `share_prefix=False`, config `data.share_prefix`, turns that off).
    """
    shared = shared_prompt_prefix(examples) if share_prefix else 0
    if shared >= MIN_SHARED_PREFIX:
        return pack_sharing_prefix(examples, max_seq_len, shared)
    out = []
    for ids, labels, lengths in _bfd(examples, max_seq_len):
        positions = [p for n in lengths for p in range(n)]
        # A sequence's first token has no context inside its sequence, as when unpacked: no loss on it.
        labels = [IGNORE if p == 0 else t for p, t in zip(positions, labels, strict=True)]
        out.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return out


def shared_prompt_prefix(examples: list[Example]) -> int:
    """How many leading tokens every example has in common without a target among them or right after
    them (so the first token after the prefix is prompt too, which its packed row cannot predict)."""
    if not examples or "labels" not in examples[0]:
        return 0
    first = examples[0]["input_ids"]
    shared = len(first)
    for e in examples:
        first_target = next((i for i, label in enumerate(e["labels"]) if label != IGNORE), len(e["labels"]))
        shared = min(shared, common_prefix_length(first, e["input_ids"]), first_target - 1)
        if shared < MIN_SHARED_PREFIX:
            return 0
    return shared


def pack_sharing_prefix(examples: list[Example], max_seq_len: int, shared: int) -> list[Example]:
    """Pack the examples' tails after a prefix they all share, with that prefix once at the start of each
    row: [prefix, tail 1, tail 2, ...]. Every tail sees the prefix and itself, at the positions it has
    unpacked (`segment_ids`: 0 the prefix, k the k-th tail; collate turns them into the attention mask),
    so the math is that of each example alone. A chat template's default system prompt is most of a
    short chat row (24 of the ~57 tokens of SmolLM2's rows in the handbook quickstart): computed once per
    sequence, not once per example, a 256-token sequence holds ~1.6x the rows."""
    prefix = examples[0]["input_ids"][:shared]
    tails = [{"input_ids": e["input_ids"][shared:], "labels": e["labels"][shared:]} for e in examples]
    out = []
    for ids, labels, lengths in _bfd(tails, max_seq_len - shared):
        positions = [shared + p for n in lengths for p in range(n)]
        segments = [k + 1 for k, n in enumerate(lengths) for _ in range(n)]
        # A tail's first token is prompt (shared_prompt_prefix sees to it): its label is IGNORE already, and
        # the token before it in the row belongs to another tail.
        out.append(
            {
                "input_ids": prefix + ids,
                "labels": [IGNORE] * shared + labels,
                "position_ids": list(range(shared)) + positions,
                "segment_ids": [0] * shared + segments,
            }
        )
    return out


def _bfd(examples: list[Example], seq_length: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(input_ids, labels, sequence lengths) of each packed row."""
    import datasets

    columns = {k: [e[k] for e in examples] for k in ("input_ids", "labels")}
    from trl.data_utils import pack_dataset

    packed = pack_dataset(datasets.Dataset.from_dict(columns), seq_length=seq_length, strategy="bfd")
    return [(row["input_ids"], row["labels"], row["seq_lengths"]) for row in packed]
