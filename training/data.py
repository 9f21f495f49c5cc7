"""Reading the user's data: files to rows, rows to a detected format, with errors that name the row.

Rows keep where they came from (`_source`: "file:line") so every later error can point at the row.
Tokenization and packing live in `training/tokens.py`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hone.training.config import DataConfig, DataSource, data_sources, is_hub_dataset
from hone.training.errors import DataError
from hone.training.formats import to_hone_row

TEXT_SUFFIXES = {".txt", ".md"}
# The fields each format needs, in detection order: the first format whose fields the first row holds wins.
FORMAT_FIELDS = {
    "preference": ("prompt", "chosen", "rejected"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "text": ("text",),
}


# Modes that learn from chosen/rejected pairs; they always read the "preference" format.
PREFERENCE_MODES = ("dpo", "reward")


ROLES = ("system", "user", "assistant", "tool")  # the roles chat templates know


def normalize_answer(text: Any) -> str:
    """How every exact match in hone compares an answer with its reference (the sft and pipeline
    evaluations, the RL `exact_match` reward): whitespace runs collapsed, case ignored."""
    return " ".join(str(text).split()).lower()


class DataWarning(UserWarning):
    """Data that trains, but probably not as the user meant (chosen identical to rejected)."""


Row = dict[str, Any]


def load_rows(entries: list[str | DataSource], columns: Mapping[str, str] | None = None) -> list[Row]:
    """Read every source in `entries` (data.train / data.eval) into one list of rows, each in one of hone's
    formats: fields renamed by `columns` (data.columns), rows of other tools' formats converted
    (training/formats.py)."""
    return [row for part in load_sources(entries, columns) for row in part]


def load_sources(entries: list[str | DataSource], columns: Mapping[str, str] | None = None) -> list[list[Row]]:
    """The rows of each source, in the order data.train lists them."""
    parts = []
    for source in data_sources(entries):
        found = _read_source(source)
        if not found:
            raise DataError(f"data file {source.path} holds no rows: add examples or remove it from the config")
        if not isinstance(found[0], TextFileRow):  # a text file's row is its text, read only when needed
            found = [to_hone_row(row, columns or {}) for row in found]
        parts.append(found)
    return parts


def _read_source(source: DataSource) -> list[Row]:
    path = Path(source.path).expanduser()
    if path.exists() and not (source.split or source.subset or hub_layout(path)):
        return _read_path(path)
    if path.is_dir() or is_hub_dataset(source.path):
        return _read_hub_dataset(source)
    if source.split or source.subset:
        raise DataError(
            f"data source {source.path}: split/subset pick a part of a hub dataset (org/name) or of a local folder "
            "laid out like one, and this is neither; remove split and subset"
        )
    raise DataError(f"data file {path} does not exist: check data.train / data.eval in your config")


def hub_layout(path: Path) -> bool:
    """A folder laid out like a hub dataset repository: its README.md (the dataset card) starts with a YAML
    header naming `configs` or `dataset_info`. Its data is where the card says, not the README's text."""
    card = path / "README.md"
    if not (path.is_dir() and card.is_file()):
        return False
    header = card.read_text(encoding="utf-8", errors="replace").split("\n---", 1)[0]
    return header.startswith("---") and ("\nconfigs:" in header or "\ndataset_info:" in header)


def _read_hub_dataset(source: DataSource) -> list[Row]:
    """A hub dataset (or a local folder laid out like a hub dataset repository) through `datasets`, which
    finds its files, subsets and splits as the hub does. Rows are named "name[split]:row N"."""
    import datasets

    split = source.split or "train"
    local = Path(source.path).is_dir()
    try:
        table = datasets.load_dataset(source.path, source.subset or None, split=split)
    except Exception as err:  # offline, unknown id, no such split or subset: datasets says which
        what = "local dataset folder" if local else "hub dataset"
        hint = "; a subset or split it names goes into the data source: {path: ..., subset: ..., split: ...}"
        hint += "" if local else "; a local path must exist (paths are relative to the config file)"
        raise DataError(
            f"data source {source.path} (split {split!r}{f', subset {source.subset!r}' if source.subset else ''}): "
            f"the {what} did not load: {type(err).__name__}: {str(err)[:500]}{hint}"
        ) from None
    return [{**row, "_source": f"{source.path}[{split}]:row {i}"} for i, row in enumerate(table)]


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def folder_files(path: Path, suffixes: set[str] = TEXT_SUFFIXES) -> list[Path]:
    """The files a data folder contributes: its .txt and .md files (`suffixes`; every file of a saved
    `datasets` dir or of a folder laid out like a hub dataset repository), never hidden ones (.env, .git/...), and never through a symlink that leads out of the
    folder. `hone submit` ships exactly these, so a job carries what the run reads and nothing else."""
    root = path.resolve()
    saved = is_saved_dataset(path) or hub_layout(path)  # every file: the data is where its metadata says
    files = []
    for p in sorted(path.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(path).parts) or not p.is_file():
            continue
        if not (saved or p.suffix.lower() in suffixes):
            continue
        if not p.resolve().is_relative_to(root):
            raise DataError(
                f"{p} is a symlink to {p.resolve()}, outside the data folder {path}; copy the file into the folder or remove the link"
            )
        files.append(p)
    return files


def _read_path(path: Path) -> list[Row]:
    if path.is_dir():
        if is_saved_dataset(path):
            return _read_saved_dataset(path)
        files = folder_files(path)
        if not files:
            raise DataError(f"folder {path} has no .txt or .md files and is not a saved `datasets` directory")
        return [row for f in files for row in _read_text_file(f)]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".parquet"):
        return _read_table(path)
    if suffix in TEXT_SUFFIXES:
        return _read_text_file(path)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet, .txt or .md")


def read_utf8(path: Path) -> str:
    """A text data file's content. A UTF-8 byte-order mark (Windows tools write one) is dropped; a file
    that is not UTF-8, or holds NUL bytes (a binary file named .txt), is refused by name."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); re-save it as UTF-8, or remove it"
        ) from None
    if "\x00" in text:
        raise DataError(f"{path}: holds NUL bytes, so it is not a text file; remove it from the data folder or config")
    return text


def _read_jsonl(path: Path) -> list[Row]:
    # Parsed by hand rather than with `datasets`, whose JSON errors do not say which line is broken.
    rows = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg}); fix or delete line {number}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
        row["_source"] = f"{path}:{number}"
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} ({err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: a .json data file must hold a list of objects (or {{'data': [...]}})")
    return [{**row, "_source": f"{path}[{i}]"} for i, row in enumerate(data)]


def _read_table(path: Path) -> list[Row]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); write the rows into it, or remove it from the config")
    import datasets

    reader = datasets.Dataset.from_csv if path.suffix.lower() == ".csv" else datasets.Dataset.from_parquet
    try:
        table = reader(str(path), keep_in_memory=True)
    except Exception as err:  # pyarrow's and pandas' parse errors, which name no file
        raise DataError(f"{path}: not a readable {path.suffix.lower()[1:]} file ({type(err).__name__}: {err})") from None
    # CSV rows are numbered as a spreadsheet shows them: the header is row 1.
    first = 2 if path.suffix.lower() == ".csv" else 0
    return [{**row, "_source": f"{path}:row {first + i}"} for i, row in enumerate(table.to_list())]


def _read_saved_dataset(path: Path) -> list[Row]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: saved DatasetDict has splits {list(loaded)}, but no 'train' split")
        loaded = loaded["train"]
    return [{**row, "_source": f"{path}[{i}]"} for i, row in enumerate(loaded.to_list())]


def _read_text_file(path: Path) -> list[Row]:
    """A text file's one row, its text read when asked for (see TextFileRow); an empty file gives none."""
    return [TextFileRow(path)] if path.stat().st_size else []


class TextFileRow(dict):
    """The row of a .txt/.md file: {"_source": path}, and "text" read from the file each time it is asked
    for (checked as read_utf8 checks it). A corpus folder of gigabytes is then never held whole: the checks
    read each file and let it go, and pretraining tokenizes a batch of files at a time."""

    def __init__(self, path: Path):
        super().__init__(_source=str(path))
        self.path = path

    def __missing__(self, key: str) -> Any:
        if key == "text":
            return read_utf8(self.path)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key == "text" or super().__contains__(key)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return TextFileRow, (self.path,)


def detect_format(rows: list[Row], requested: str) -> str:
    """The format named in the config, or the one every file's first row has the fields of (the first
    matching in FORMAT_FIELDS' order); files whose rows are in different formats are refused, naming both."""
    if requested != "auto":
        return requested
    found: dict[str, str] = {}  # format -> the first file in it
    for first in _first_row_of_each_file(rows):
        fmt = next((f for f, fields in FORMAT_FIELDS.items() if all(name in first for name in fields)), None)
        if fmt is None:
            keys = sorted(k for k in first if k != "_source")
            raise DataError(
                f"{first['_source']}: cannot tell the data format from fields {keys}. Rows need 'text'; "
                "'prompt' and 'completion'; 'messages' (or ShareGPT 'conversations'); 'instruction' and 'output'; "
                "or 'prompt', 'chosen' and 'rejected'. Rename the fields (data.columns) or set data.format"
            )
        found.setdefault(fmt, first["_source"])
    if len(found) > 1:
        (a, where_a), (b, where_b) = list(found.items())[:2]
        raise DataError(
            f"the data mixes formats: {where_a} is {a!r} but {where_b} is {b!r}; give every file of a dataset the "
            "same format (chat rows as 'messages' can hold any of them), or train on them in separate stages"
        )
    return next(iter(found))


def _first_row_of_each_file(rows: list[Row]) -> list[Row]:
    firsts: dict[str, Row] = {}
    for row in rows:
        firsts.setdefault(_file_of(row), row)
    return list(firsts.values())


_ROW_IN_FILE = re.compile(r"(.*?)(?::\d+|:row \d+|\[\d+\])")  # "file:12", "file:row 12", "file[12]"


def _file_of(row: Row) -> str:
    """The file a row came from: its `_source` without the row's place (a text file's is the file)."""
    source = str(row.get("_source", ""))
    match = _ROW_IN_FILE.fullmatch(source)
    return match.group(1) if match else source


def check_rows(rows: list[Row], fmt: str) -> None:
    """Every row must hold the fields of the format, as strings (or a message list)."""
    for row in rows:
        values = {name: row[name] if name in row else None for name in FORMAT_FIELDS[fmt]}  # a text file is read once
        for name, value in values.items():
            if value is None:
                raise DataError(
                    f"{row['_source']}: row is missing field '{name}' needed by format {fmt!r}; "
                    f"add it to every row or set data.format to match the data"
                )
        if fmt == "messages":
            _check_messages(row)
        elif fmt == "preference":
            _check_preference(row)
        else:
            for name, value in values.items():
                if not isinstance(value, str):
                    raise DataError(f"{row['_source']}: field '{name}' must be a string, got {type(value).__name__}")


def _check_messages(row: Row, field: str = "messages", need_assistant: bool = True) -> None:
    messages = row["messages"]
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and _has_content(m) for m in messages
    )
    if not ok:
        raise DataError(
            f"{row['_source']}: '{field}' must be a list of {{'role': ..., 'content': ...}} objects "
            "(an assistant turn may give 'tool_calls' instead of content, as OpenAI's format does)"
        )
    for m in messages:
        if m["role"] not in ROLES:
            raise DataError(f"{row['_source']}: '{field}' has a message with role {m['role']!r}; use one of {', '.join(ROLES)}")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{row['_source']}: '{field}' has no assistant turn, so there is nothing to learn")


def _has_content(message: dict) -> bool:
    """Text content, or (OpenAI's tool calling) an assistant turn with tool_calls and no text."""
    if isinstance(message.get("content"), str):
        return True
    return message.get("content") is None and bool(message.get("tool_calls")) and message.get("role") == "assistant"


def _check_preference(row: Row) -> None:
    """A pair is plain text (three strings) or chat: the prompt a message list, chosen and rejected
    assistant message lists or plain strings (read as one assistant reply)."""
    where = row["_source"]
    if isinstance(row["prompt"], str):
        for name in ("chosen", "rejected"):
            if not isinstance(row[name], str):
                raise DataError(
                    f"{where}: '{name}' must be a string when 'prompt' is a string, got {type(row[name]).__name__}; "
                    "give all three as text, or the prompt as a messages list for chat pairs"
                )
        return
    _check_messages({"messages": row["prompt"], "_source": where}, field="prompt", need_assistant=False)
    for name in ("chosen", "rejected"):
        if not isinstance(row[name], str):
            _check_messages({"messages": row[name], "_source": where}, field=name, need_assistant=True)


def check_mode(fmt: str, mode: str, source: str) -> None:
    if mode in PREFERENCE_MODES and fmt != "preference":
        raise DataError(
            f"{source}: mode {mode} needs preference rows with 'prompt', 'chosen' and 'rejected', but the data is "
            f"{fmt!r}; set data.format=auto and give every row those three fields"
        )
    if mode not in PREFERENCE_MODES and fmt == "preference":
        raise DataError(f"{source}: chosen/rejected pairs train with mode: dpo or mode: reward, not mode {mode}")
    if mode == "pretrain" and fmt != "text":
        raise DataError(f"{source}: mode pretrain needs unlabeled 'text' rows, but the data is {fmt!r}; use mode: sft")
    if mode == "sft" and fmt == "text":
        raise DataError(
            f"{source}: mode sft needs labelled pairs (prompt/completion, messages or instruction/output), "
            "but the data is plain 'text'; use mode: pretrain for unlabeled text"
        )


def split_rows(rows: list[Row], data: DataConfig, seed: int) -> tuple[list[Row], list[Row]]:
    """Held-out rows: a seeded fraction of the training rows, or the rows of the eval files."""
    if isinstance(data.eval, list):
        return rows, load_rows(data.eval, data.columns)
    held = _held_out(len(rows), data.eval, seed, rows[0]["_source"])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _held_out(count: int, fraction: float, seed: int, where: str) -> set[int]:
    if count < 2:
        raise DataError(f"{where}: one row cannot be split into train and eval; add rows or set data.eval to a file")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[: min(count - 1, max(1, round(count * fraction)))])


def read_dataset(data: DataConfig, mode: str, seed: int) -> tuple[str, list[Row], list[Row]]:
    """Load, detect, check, split and mix: the format, the train rows and the eval rows."""
    parts = load_sources(data.train, data.columns)
    rows = [row for part in parts for row in part]
    # Preference modes read one format only; naming it (rather than detecting it from the first row) makes
    # a row without 'chosen' or 'rejected' fail on that row's own line.
    requested = "preference" if mode in PREFERENCE_MODES and data.format == "auto" else data.format
    fmt = detect_format(rows, requested)
    check_rows(rows, fmt)
    check_mode(fmt, mode, rows[0]["_source"])
    train_rows, eval_rows = split_and_mix(parts, data, seed)
    check_rows(eval_rows, fmt)
    return fmt, train_rows, eval_rows


def split_and_mix(parts: list[list[Row]], data: DataConfig, seed: int) -> tuple[list[Row], list[Row]]:
    """The train and eval rows of the sources' rows (`parts`); with weights, the train rows mixed."""
    train_rows, eval_rows = split_rows([row for part in parts for row in part], data, seed)
    weights = [s.weight for s in data_sources(data.train)]
    if any(weights):
        # Held-out rows leave first, so a row repeated by upsampling never lands in both splits.
        kept = {id(r) for r in train_rows}
        train_rows = mix([[r for r in part if id(r) in kept] for part in parts], weights, seed)
    return train_rows, eval_rows


def mix(parts: list[list[Row]], weights: list[float], seed: int) -> list[Row]:
    """As many rows as the parts hold together, each part giving its weight's share of them (largest
    remainders decide the rounding): a part's rows drawn without replacement while it has enough, whole
    repeats of it plus a draw of the rest when it has too few. The mixture comes out shuffled."""
    total, rng = sum(len(p) for p in parts), random.Random(seed)
    counts = shares(total, weights)
    mixed: list[Row] = []
    for part, count in zip(parts, counts, strict=True):
        if count and not part:
            raise DataError("a weighted data.train source has no training rows left after the eval split; add rows")
        repeats, rest = divmod(count, len(part)) if part else (0, 0)
        mixed += part * repeats + rng.sample(part, rest)
    rng.shuffle(mixed)
    return mixed


def shares(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to it (largest remainders)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
