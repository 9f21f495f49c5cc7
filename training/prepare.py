"""Everything checked and computed before any Ray resource is taken: model source, data, tokens, steps.

`hone validate` prints what this returns; `hone run` trains on it. The data is read and checked first,
and the tokenizer side (torch, transformers, trl: seconds to import) only after, so a bad data file is
reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hone.training.config import HoneConfig
from hone.training.data import PREFERENCE_MODES, DataError, Row, read_dataset
from hone.training.ds_config import global_batch
from hone.training.models import check_max_seq_len, load_tokenizer, objective, resolve_source

if TYPE_CHECKING:
    from hone.training.tokens import Example, TokenStats


@dataclass
class Prepared:
    resolved_model: str
    kind: str  # causal | masked | reward (a sequence classifier with one score)
    fmt: str
    train_rows: list[Row]
    eval_rows: list[Row]
    train_examples: list[Example]
    eval_examples: list[Example]
    train_stats: TokenStats
    eval_stats: TokenStats
    global_batch: int
    steps_per_epoch: int
    total_steps: int

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
        }


def shared_prefix_tokens(examples: list[Example]) -> int:
    """The prompt tokens packing placed once per sequence (tokens.pack_sharing_prefix), 0 when none."""
    return examples[0]["segment_ids"].count(0) if examples and "segment_ids" in examples[0] else 0


def prepare(cfg: HoneConfig) -> Prepared:
    fmt, train_rows, eval_rows = read_dataset(cfg.data, cfg.mode, cfg.seed)
    from hone.training.batches import steps_per_epoch
    from hone.training.tokens import pack

    resolved = resolve_source(cfg.model.source)
    kind = objective(cfg.model, resolved)
    if cfg.mode != "pretrain" and kind == "masked":
        raise DataError(f"mode {cfg.mode} needs a causal (decoder) model, but model.source is an encoder: use mode: pretrain")
    if cfg.mode in PREFERENCE_MODES and cfg.data.packing:
        raise DataError(f"data.packing=true does not apply to mode {cfg.mode}: pairs are scored whole; set data.packing=false")
    kind = "reward" if cfg.mode == "reward" else kind
    check_max_seq_len(cfg.model, resolved, cfg.data.max_seq_len)
    tokenizer = load_tokenizer(cfg.model, resolved)
    if kind == "masked" and tokenizer.mask_token_id is None:
        raise DataError("model.objective=masked needs a tokenizer with a mask token, and this one has none")
    train, train_stats = _tokenize(cfg, kind, fmt, train_rows, tokenizer)
    evals, eval_stats = _tokenize(cfg, kind, fmt, eval_rows, tokenizer)
    _require_examples(train, train_stats, cfg, "data.train")
    _require_examples(evals, eval_stats, cfg, "the eval split")
    if cfg.data.packing and kind == "causal":
        train = pack(train, cfg.data.max_seq_len, cfg.data.share_prefix)
    batch = global_batch(cfg)
    per_epoch = steps_per_epoch(len(train), batch)
    if per_epoch == 0:
        raise DataError(
            f"the global batch ({batch} = micro_batch_per_device {cfg.train.micro_batch_per_device} x grad_accum "
            f"{cfg.train.grad_accum} x num_workers {cfg.scaling.num_workers}) is larger than the {len(train)} training "
            "sequences: add data or lower train.micro_batch_per_device / train.grad_accum / scaling.num_workers"
        )
    total = cfg.train.max_steps or per_epoch * cfg.train.num_epochs
    return Prepared(resolved, kind, fmt, train_rows, eval_rows, train, evals, train_stats, eval_stats, batch, per_epoch, total)


def _tokenize(cfg: HoneConfig, kind: str, fmt: str, rows: list[Row], tokenizer: Any) -> tuple[list[Example], TokenStats]:
    from hone.training.tokens import build_preference, build_pretrain, build_supervised

    if cfg.mode == "pretrain":
        return build_pretrain(rows, tokenizer, cfg.data.max_seq_len, masked=kind == "masked")
    if cfg.mode in PREFERENCE_MODES:
        return build_preference(rows, tokenizer, cfg.data.max_seq_len, cfg.mode)
    return build_supervised(rows, fmt, tokenizer, cfg.data.max_seq_len)


def _require_examples(examples: list[Example], stats: TokenStats, cfg: HoneConfig, where: str) -> None:
    if examples:
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
    for split, examples in (("train", prepared.train_examples), ("eval", prepared.eval_examples)):
        if len(logps[split]) != len(examples):
            raise DataError(
                f"the cached reference log-probs cover {len(logps[split])} {split} pairs but the data now gives "
                f"{len(examples)}: the data changed since this run started; set overwrite=true to start it again"
            )
        for example, pair in zip(examples, logps[split], strict=True):
            example["ref_logps"] = list(pair)
