"""Tokenized examples on disk: one Arrow file per split, keyed by what made them, memory-mapped by readers.

Tokenizing was the slow part of every validate, run, resume and submit, and Python lists of tokens cost
~35-40 bytes a token in the driver, then once more in every worker through the object store. The cache
holds int32 columns (4 bytes a token) written a batch at a time as tokenization goes; the driver, the
evaluation task and every Train worker map the file (`TokenTable`), so a reader holds only the pages it
touches, and the workers of one node share them through the page cache.

The key is the content of what made the examples: the data files' bytes (their sha256, remembered by
path, size and mtime, so an unchanged 1 GB corpus is not read again), the tokenizer's files, the data
settings, mode, seed and `CACHE_VERSION`. Change any of them and the examples are built again; nothing
is ever rewritten in place (a new key is a new folder, written under a temporary name and renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from hone.training.config import DataSource, HoneConfig, data_sources, is_hub_dataset
from hone.training.data import folder_files, is_saved_dataset
from hone.training.examples import Example
from hone.training.models import CACHE_DIR, file_sha256, looks_like_path

# Raise when the examples built from the same inputs change (tokens.py, data.py, packing).
CACHE_VERSION = 3
# Columns of floats; every other column is token ids or 0/1 masks (int32).
FLOAT_COLUMNS = ("ref_logps", "pair_weight")
# Files of a model directory that are weights, not tokenizer or config: left out of the key (a 70B model's
# weights would take minutes to hash, and do not change its tokens).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
SPLITS = ("train", "eval")


def cache_root(cfg: HoneConfig) -> Path:
    """`data.cache_dir`, or ~/.cache/hone/tokens ($HONE_CACHE/tokens). A multi-node run maps the files on
    every node, so there it belongs on shared storage (without that, the driver ships them by value)."""
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else CACHE_DIR / "tokens"


def cache_key(cfg: HoneConfig) -> str:
    """A digest of everything the tokenized examples depend on."""
    # The files by content, not by path: a copied or moved data folder is the same data.
    # where and by whom the examples are made does not change them
    where = ("cache_dir", "cluster_tokenize_from", "train", "eval")
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in where}
    parts = {
        "version": CACHE_VERSION,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "data": data,
        "model": {"objective": cfg.model.objective, "tokenizer": tokenizer_identity(cfg.model.source)},
        # a template file by its content (a name stands for the template TRL ships under it)
        "chat_template": tokenizer_identity(cfg.data.chat_template) if cfg.data.chat_template else "",
        "files": {split: _data_identity(paths) for split, paths in (("train", cfg.data.train), ("eval", cfg.data.eval))},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def tokenizer_identity(source: str) -> str:
    """A model directory by its non-weight files (tokenizer, chat template, config); a GGUF file by its
    bytes; a hub id as given (an upstream change under the same id is not seen: pin a local copy)."""
    if not looks_like_path(source):
        return source
    path = Path(source).expanduser().resolve()
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return str(path)  # missing: prepare reports it
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES))
    return _digest({p.name: file_sha256(p) for p in files})


def _data_identity(entries: list[str | DataSource] | float) -> Any:
    if not isinstance(entries, list):
        return entries  # a held-out fraction of the train rows: part of the data settings already
    return [_source_identity(s) for s in data_sources(entries)]


def _source_identity(source: DataSource) -> Any:
    """A local source by its files' content; a hub dataset by its id, as given (like a hub model: an
    upstream change under the same id is not seen; pin a local copy). Weight, split and subset with it."""
    picked = {"weight": source.weight, "split": source.split, "subset": source.subset}
    path = Path(source.path).expanduser()
    files = source.path if is_hub_dataset(source.path) else {name: file_sha256(f) for name, f in _files(path)}
    return files if picked == {"weight": 0.0, "split": "", "subset": ""} else {"files": files, **picked}


def _files(path: Path) -> list[tuple[str, Path]]:
    """The files a data path reads, named relative to it. A missing path contributes nothing: the read that
    follows a cache miss reports it."""
    if path.is_file():
        return [(path.suffix.lower(), path)]  # its name is not its content; its type says how it is read
    if not path.is_dir():
        return []
    found = (
        sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
        if is_saved_dataset(path)
        else folder_files(path)
    )
    return [(p.relative_to(path).as_posix(), p) for p in found]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Reading: a sequence of examples over a memory-mapped Arrow file


class TokenTable(Sequence[Example]):
    """Examples (dicts of lists, as tokens.py builds them) read on demand from an Arrow table. Pickled (to
    a Ray task or worker) as its path when it has one, so the receiver maps the same file; a table with no
    file (`detached`, `with_column`) travels by value, which Ray hands to a node's workers without a copy."""

    def __init__(self, table: Any, path: str | None = None):
        self.table, self.path = table, path

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.table.slice(index % len(self), 1).to_pylist()[0]

    def __iter__(self) -> Iterator[Example]:
        for batch in self.table.to_batches():
            yield from batch.to_pylist()

    def with_column(self, name: str, values: list[Any]) -> TokenTable:
        import pyarrow as pa

        kind = pa.list_(pa.float64() if name in FLOAT_COLUMNS else pa.int32())
        return TokenTable(self.table.append_column(name, pa.array(values, type=kind)))

    def detached(self) -> TokenTable:
        """The same examples, pickled by value: for workers that cannot see this file (another node)."""
        return TokenTable(self.table)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.path is not None:
            return open_table, (self.path,)
        return TokenTable, (self.table,)


def open_table(path: str) -> TokenTable:
    import pyarrow as pa

    if not Path(path).exists():
        raise FileNotFoundError(
            f"the token cache {path} is not on this node: a multi-node run needs data.cache_dir on storage every "
            "node mounts (or leave data.cache_dir unset and hone ships the examples to the nodes)"
        )
    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()  # zero-copy: the columns point into the mapping
    return TokenTable(table, path)


# ----------------------------------------------------------------------------------------------------
# Writing: batches of examples into a folder that appears whole or not at all


def record_batch(examples: Sequence[Example]) -> Any:
    """Examples as an Arrow record batch: a list column per field, int32 tokens (float64 for log-probs)."""
    import pyarrow as pa

    schema = pa.schema([(k, pa.list_(pa.float64() if k in FLOAT_COLUMNS else pa.int32())) for k in examples[0]])
    return pa.record_batch([[e[name] for e in examples] for name in schema.names], schema=schema)


class CacheWriter:
    """Writes one cache entry: `write(split, examples)` as many times as batches come, `commit(meta)` at
    the end. Until committed the entry lives in a temporary folder, which `discard` (or an error) removes, so
    a killed or failed build never leaves an entry that looks complete."""

    def __init__(self, root: Path, key: str):
        self.final = root / key
        self.tmp = root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.writers: dict[str, Any] = {}
        self.counts = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, examples: Sequence[Example]) -> None:
        if examples:
            self.write_batch(split, record_batch(examples))

    def write_batch(self, split: str, batch: Any) -> None:
        """Append an Arrow record batch of examples (`record_batch`) to the split."""
        import pyarrow as pa

        if split not in self.writers:
            self.writers[split] = pa.ipc.new_file(str(self.tmp / f"{split}.arrow"), batch.schema)
        self.writers[split].write_batch(batch)
        self.counts[split] += batch.num_rows

    def commit(self, meta: dict[str, Any]) -> Path:
        from hone.training.files import write_json

        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        write_json(self.tmp / "meta.json", meta, indent=1)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if read_entry(self.final.parent, self.final.name) is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)  # another run committed it first: same examples
            else:  # a torn entry (the reason this one was built): replaced
                shutil.rmtree(self.final, ignore_errors=True)
                os.rename(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_entry(root: Path, key: str) -> tuple[dict[str, Any], dict[str, TokenTable]] | None:
    """A committed entry's meta and mapped tables, or None when there is none (or it is unreadable)."""
    from hone.training.files import read_json

    folder = root / key
    try:
        meta = read_json(folder / "meta.json")
        if meta is None:
            return None
        tables = {split: open_table(str(folder / f"{split}.arrow")) for split in SPLITS}
    except Exception:  # a torn or hand-edited entry is rebuilt, never trusted
        return None
    return meta, tables
