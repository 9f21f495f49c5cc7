"""The data formats users bring from other tools, turned into hone's own as each file is read.

hone's formats (training/data.py FORMAT_FIELDS) are text, prompt/completion, messages, instruction/output
and preference pairs. Rows from other tools become one of them, row by row, so files of different tools
mix in one dataset and every error still names the file and row:

- ShareGPT (LLaMA-Factory, Axolotl): `conversations`, a list of {"from", "value"} turns with roles
  human/gpt/system/tool (and LLaMA-Factory's observation/function_call) -> `messages`.
- TRL's conversational prompt-completion (`prompt` and `completion` both message lists) -> `messages`, any
  assistant turn of the prompt marked `"weight": 0` (context, not a target, as TRL trains it).
- TRL's implicit-prompt preference (`chosen` and `rejected` full conversations, no `prompt`) -> a pair whose
  prompt is the turns both share and whose chosen/rejected are the turns after them.
- `data.columns` renames any other fields first ({question: prompt, answer: completion}).

Why not TRL's `maybe_convert_to_chatml` and `extract_prompt`: the first renames from/value but keeps
ShareGPT's speaker names (human, gpt) as roles, which chat templates do not know, and knows nothing of
LLaMA-Factory's tool turns or system column; neither names the row when a row cannot be read, which every
hone data error does. The conversions are a few lines each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hone.training.errors import DataError

Row = dict[str, Any]

# ShareGPT speaker names -> chat roles. LLaMA-Factory writes tool results as "observation" and the
# assistant's tool call as "function_call".
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_call": "assistant",
}


def to_hone_row(row: Row, columns: Mapping[str, str]) -> Row:
    """`row` in one of hone's formats: renamed by `columns`, then converted if it is in another tool's
    format. Rows already in hone's formats (and lazily read text files) are returned as they are."""
    if columns:
        row = _renamed(row, columns)
    if "conversations" in row and "messages" not in row:
        return _from_sharegpt(row)
    if "prompt" in row and "completion" in row and isinstance(row["prompt"], list) and isinstance(row["completion"], list):
        # TRL trains on the completion only: an assistant turn inside the prompt is context, not a target
        prompt = [{**m, "weight": 0} if isinstance(m, dict) and m.get("role") == "assistant" else m for m in row["prompt"]]
        rest = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        return {**rest, "messages": [*prompt, *row["completion"]]}
    if "chosen" in row and "rejected" in row and "prompt" not in row:
        return _from_implicit_prompt(row)
    return row


def _renamed(row: Row, columns: Mapping[str, str]) -> Row:
    clashes = [new for old, new in columns.items() if old in row and new in row and new != old]
    if clashes:
        raise DataError(
            f"{row.get('_source', '?')}: data.columns renames a field to {clashes[0]!r}, which the row already has; "
            "rename it to another name or drop that field"
        )
    return {columns.get(k, k): v for k, v in row.items()}


def _from_sharegpt(row: Row) -> Row:
    where, turns = row.get("_source", "?"), row["conversations"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise DataError(f"{where}: 'conversations' must be a list of {{'from': ..., 'value': ...}} turns")
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            known = ", ".join(sorted(SHAREGPT_ROLES))
            raise DataError(f"{where}: conversations[{i}] is from {speaker!r}; use one of {known} (ShareGPT's speakers)")
        if not isinstance(text, str):
            raise DataError(f"{where}: conversations[{i}] has no text in 'value'")
        messages.append({"role": role, "content": text})
    rest = {k: v for k, v in row.items() if k not in ("conversations", "system")}
    if isinstance(row.get("system"), str) and row["system"] and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": row["system"]})  # LLaMA-Factory's separate system column
    return {**rest, "messages": messages}


def _from_implicit_prompt(row: Row) -> Row:
    chosen, rejected = row["chosen"], row["rejected"]
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return row  # plain-text pairs with no prompt: the preference checks say what is missing
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    where = row.get("_source", "?")
    if shared == 0:
        raise DataError(
            f"{where}: 'chosen' and 'rejected' share no first turn, so there is no prompt to read from them; "
            "start both with the same user turn(s), or give the prompt as its own 'prompt' field"
        )
    if shared == len(chosen) or shared == len(rejected):
        raise DataError(f"{where}: one of 'chosen' and 'rejected' is all prompt (no reply after the shared turns)")
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
