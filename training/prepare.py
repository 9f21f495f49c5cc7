"""Everything checked and computed before any Ray resource is taken: model source, data, tokens, steps.

`hone validate` prints what this returns; `hone run` trains on it. The data is read and checked first,
and the tokenizer side (torch, transformers, trl: seconds to import) only after, so a bad data file is
reported at once.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hone.training.config import HoneConfig
from hone.training.data import PREFERENCE_MODES, DataError, DataWarning, Row, read_dataset
from hone.training.ds_config import global_batch, steps_per_epoch
from hone.training.examples import TokenStats
from hone.training.models import check_max_seq_len, load_tokenizer, objective, resolve_source
from hone.training.token_cache import CacheWriter, TokenTable, cache_key, cache_root, read_entry

if TYPE_CHECKING:
    from hone.training.tokens import Example


@dataclass
class Prepared:
    resolved_model: str
    kind: str  # causal | masked | reward (a sequence classifier with one score)
    fmt: str
    eval_rows: list[Row]  # sft's held-out questions (generation metrics); empty in other modes
    train_examples: TokenTable
    eval_examples: TokenTable
    train_stats: TokenStats
    eval_stats: TokenStats
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    token_cache: str  # the cache entry the examples were read from
    cache_hit: bool

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.resolved_model,
            "objective": self.kind,
            "format": self.fmt,
            "train": self.train_stats.as_dict(),
            "eval": self.eval_stats.as_dict(),
            "train_sequences_after_packing": len(self.train_examples),
            "shared_prefix_tokens": shared_prefix_tokens(self.train_examples),
            "global_batch": self.global_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "token_cache": {"path": self.token_cache, "reused": self.cache_hit},
        }


def shared_prefix_tokens(examples: Sequence[Example]) -> int:
    """The prompt tokens packing placed once per sequence (tokens.pack_sharing_prefix), 0 when none."""
    return examples[0]["segment_ids"].count(0) if len(examples) and "segment_ids" in examples[0] else 0


def prepare(cfg: HoneConfig) -> Prepared:
    """The run's tokenized examples, from the token cache when the same data, tokenizer and settings made
    them before (see token_cache.py), else read, checked, tokenized and written to it."""
    root, key = cache_root(cfg), cache_key(cfg)
    entry = read_entry(root, key)
    hit = entry is not None
    if entry is None:
        entry = _build(cfg, root, key)
    else:
        for message in entry[0]["warnings"]:
            warnings.warn(message, DataWarning, stacklevel=2)
    meta, tables = entry
    resolved = resolve_source(cfg.model.source)  # a GGUF's converted directory: cached, but may be gone
    train_stats, eval_stats = (TokenStats.from_dict(meta["stats"][split]) for split in ("train", "eval"))
    batch = global_batch(cfg)
    per_epoch = steps_per_epoch(len(tables["train"]), batch)
    if per_epoch == 0:
        raise DataError(
            f"the global batch ({batch} = micro_batch_per_device {cfg.train.micro_batch_per_device} x grad_accum "
            f"{cfg.train.grad_accum} x num_workers {cfg.scaling.num_workers}) is larger than the {len(tables['train'])} "
            "training sequences: add data or lower train.micro_batch_per_device / train.grad_accum / scaling.num_workers"
        )
    total = cfg.train.max_steps or per_epoch * cfg.train.num_epochs
    return Prepared(
        resolved,
        meta["kind"],
        meta["fmt"],
        meta["eval_rows"],
        tables["train"],
        tables["eval"],
        train_stats,
        eval_stats,
        batch,
        per_epoch,
        total,
        str(root / key),
        hit,
    )


def _build(cfg: HoneConfig, root: Path, key: str) -> tuple[dict[str, Any], dict[str, TokenTable]]:
    """Read and check the data, then tokenize it into a new cache entry (committed only when whole)."""
    fmt, train_rows, eval_rows = read_dataset(cfg.data, cfg.mode, cfg.seed)

    resolved = resolve_source(cfg.model.source)
    kind = objective(cfg.model, resolved)
    if cfg.mode != "pretrain" and kind == "masked":
        raise DataError(f"mode {cfg.mode} needs a causal (decoder) model, but model.source is an encoder: use mode: pretrain")
    if cfg.mode in PREFERENCE_MODES and cfg.data.packing:
        raise DataError(f"data.packing=true does not apply to mode {cfg.mode}: pairs are scored whole; set data.packing=false")
    kind = "reward" if cfg.mode == "reward" else kind
    check_max_seq_len(cfg.model, resolved, cfg.data.max_seq_len)
    tokenizer = load_tokenizer(cfg.model, resolved, cfg.data.chat_template)
    if kind == "masked" and tokenizer.mask_token_id is None:
        raise DataError("model.objective=masked needs a tokenizer with a mask token, and this one has none")
    writer = CacheWriter(root, key)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            train_stats = _write_split(cfg, kind, fmt, train_rows, tokenizer, writer, "train")
            eval_stats = _write_split(cfg, kind, fmt, eval_rows, tokenizer, writer, "eval")
        for w in caught:  # shown now, and again on every run that reuses the entry
            warnings.warn(w.message, w.category, stacklevel=3)
        meta = {
            "fmt": fmt,
            "kind": kind,
            "stats": {"train": train_stats.as_dict(), "eval": eval_stats.as_dict()},
            "eval_rows": eval_rows if cfg.mode == "sft" else [],
            "warnings": [str(w.message) for w in caught if issubclass(w.category, DataWarning)],
        }
        writer.commit(meta)
    except BaseException:
        writer.discard()
        raise
    entry = read_entry(root, key)
    if entry is None:
        raise DataError(f"the token cache entry {root / key} could not be read back right after writing it: check the disk")
    return entry


def _write_split(
    cfg: HoneConfig, kind: str, fmt: str, rows: list[Row], tokenizer: Any, writer: CacheWriter, split: str
) -> TokenStats:
    """Tokenize a split into the cache entry: plain text a batch of documents at a time, never whole (a
    corpus can be gigabytes); labelled rows whole, since packing and the pair checks look at all of them."""
    from hone.training.tokens import PRETRAIN_BATCH_ROWS, pack, pretrain_batches

    where = "data.train" if split == "train" else "the eval split"
    packed = split == "train" and cfg.data.packing and kind == "causal"
    if cfg.mode == "pretrain" and not packed:
        from tqdm.auto import tqdm

        # A bar on a terminal only (tqdm's disable=None), for corpora that take a while: ~2M tokens/s here.
        bar = tqdm(total=len(rows), desc=f"hone: tokenizing {split}", unit=" docs", disable=None if len(rows) > 1000 else True)
        masked = kind == "masked"
        if _on_cluster(cfg, rows):
            stats = TokenStats()
            for docs, batch, part in cluster_pretrain_batches(rows, tokenizer, cfg.data.max_seq_len, masked):
                if batch is not None:
                    writer.write_batch(split, batch)
                stats.merge(part)
                bar.update(docs)
                bar.set_postfix(tokens=f"{stats.num_tokens / 1e6:.1f}M", refresh=False)
        else:
            stats = TokenStats(num_rows=len(rows))
            for examples in pretrain_batches(rows, tokenizer, cfg.data.max_seq_len, masked, stats):
                writer.write(split, examples)
                bar.update(min(PRETRAIN_BATCH_ROWS, bar.total - bar.n))
                bar.set_postfix(tokens=f"{stats.num_tokens / 1e6:.1f}M", refresh=False)
        bar.close()
        _require_examples(writer.counts[split], stats, cfg, where)
        return stats
    examples, stats = _tokenize(cfg, kind, fmt, rows, tokenizer)
    _require_examples(len(examples), stats, cfg, where)
    if packed:
        examples = pack(examples, cfg.data.max_seq_len, cfg.data.share_prefix)
    for start in range(0, len(examples), WRITE_BATCH):
        writer.write(split, examples[start : start + WRITE_BATCH])
    return stats


WRITE_BATCH = 4096  # examples per Arrow record batch


def _on_cluster(cfg: HoneConfig, rows: list[Row]) -> bool:
    """Tokenize with Ray tasks: the caller joined a cluster before preparing (only `hone run --address` and
    `hone submit` do; a local cluster starts after the data is checked) and the split is large."""
    import sys

    if not cfg.data.cluster_tokenize_from or len(rows) < cfg.data.cluster_tokenize_from or "ray" not in sys.modules:
        return False
    import ray

    return bool(ray.is_initialized())


CLUSTER_TASK_DOCS = 512  # documents per tokenizing task


def cluster_pretrain_batches(
    rows: list[Row], tokenizer: Any, max_seq_len: int, masked: bool
) -> Iterator[tuple[int, Any, TokenStats]]:
    """`pretrain_batches` as Ray tasks spread over the cluster, CLUSTER_TASK_DOCS documents each, yielded in
    the documents' order (the examples are the driver's own, in the same order): (documents, the examples
    as an Arrow record batch or None, their counts). The driver reads the texts (its files need not be on
    other nodes) and ships them; tokens come back as int32 Arrow columns, and at most two tasks per cluster
    CPU are in flight, so the driver never holds more than that much of the corpus."""
    import ray

    task = ray.remote(_tokenize_part).options(num_cpus=1, scheduling_strategy="SPREAD")
    tokenizer_ref = ray.put(tokenizer)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque[tuple[int, Any]] = deque()
    for start in range(0, len(rows), CLUSTER_TASK_DOCS):
        texts = [row["text"] for row in rows[start : start + CLUSTER_TASK_DOCS]]
        pending.append((len(texts), task.remote(texts, tokenizer_ref, max_seq_len, masked)))
        if len(pending) >= window:
            docs, ref = pending.popleft()
            yield (docs, *ray.get(ref))
    while pending:
        docs, ref = pending.popleft()
        yield (docs, *ray.get(ref))


def _tokenize_part(texts: list[str], tokenizer: Any, max_seq_len: int, masked: bool) -> tuple[Any, TokenStats]:
    """One task's documents tokenized as the driver would (`pretrain_batches`), as one record batch."""
    from hone.training.token_cache import record_batch
    from hone.training.tokens import pretrain_batches

    stats = TokenStats(num_rows=len(texts))
    examples = [
        e for batch in pretrain_batches([{"text": t} for t in texts], tokenizer, max_seq_len, masked, stats) for e in batch
    ]
    return (record_batch(examples) if examples else None), stats


def _tokenize(cfg: HoneConfig, kind: str, fmt: str, rows: list[Row], tokenizer: Any) -> tuple[list[Example], TokenStats]:
    from hone.training.tokens import build_preference, build_pretrain, build_supervised

    if cfg.mode == "pretrain":
        return build_pretrain(rows, tokenizer, cfg.data.max_seq_len, masked=kind == "masked")
    if cfg.mode in PREFERENCE_MODES:
        return build_preference(rows, tokenizer, cfg.data.max_seq_len, cfg.mode)
    return build_supervised(rows, fmt, tokenizer, cfg.data.max_seq_len, cfg.data.train_on_prompt)


def _require_examples(count: int, stats: TokenStats, cfg: HoneConfig, where: str) -> None:
    if count:
        return
    reasons = "; ".join(f"{n} {why}" for why, n in stats.dropped.items()) or "no usable rows"
    # The fix depends on why: a too-short text needs more text, an over-long prompt a longer max_seq_len.
    too_long = any("max_seq_len" in why for why in stats.dropped)
    fix = (
        f"raise data.max_seq_len (now {cfg.data.max_seq_len}) or shorten the prompts"
        if too_long
        else "give rows with more text (each needs at least 2 tokens)"
    )
    raise DataError(f"{where}: every one of the {stats.num_rows} examples was dropped ({reasons}): {fix}")


def attach_reference(prepared: Prepared, logps: dict[str, list[list[float]]]) -> None:
    """Give every DPO pair its reference log-probs ("ref_logps": [chosen, rejected]), computed once per run."""
    for split in ("train", "eval"):
        examples: TokenTable = getattr(prepared, f"{split}_examples")
        if len(logps[split]) != len(examples):
            raise DataError(
                f"the cached reference log-probs cover {len(logps[split])} {split} pairs but the data now gives "
                f"{len(examples)}: the data changed since this run started; set overwrite=true to start it again"
            )
        setattr(prepared, f"{split}_examples", examples.with_column("ref_logps", [list(pair) for pair in logps[split]]))
