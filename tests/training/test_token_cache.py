"""The token cache: reused when nothing changed, rebuilt when data, tokenizer or settings did, never left
half-written, and handed to other processes as a path to map rather than a copy of the tokens."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from hone.training.config import load_config
from hone.training.data import DataError
from hone.training.prepare import prepare
from hone.training.token_cache import TokenTable
from tests.tiny import copy_rows, write_jsonl


def _cfg(cache: Path, model: Path, data: Path, *extra: str):
    overrides = [f"model.source={model}", f"data.train=[{data}]", "data.max_seq_len=32", f"data.cache_dir={cache}", *extra]
    return load_config(None, overrides)


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_a_rerun_reuses_the_entry_and_gets_the_same_examples(tmp_path, assets):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(40))
    first = prepare(_cfg(cache, assets["llama"], data))
    assert not first.cache_hit and len(_entries(cache)) == 1
    written = (Path(first.token_cache) / "train.arrow").stat().st_mtime_ns
    second = prepare(_cfg(cache, assets["llama"], data))
    assert second.cache_hit and second.token_cache == first.token_cache
    assert (Path(second.token_cache) / "train.arrow").stat().st_mtime_ns == written  # read, not rewritten
    assert list(second.train_examples) == list(first.train_examples)
    assert list(second.eval_examples) == list(first.eval_examples)
    assert second.eval_rows == first.eval_rows and second.summary()["train"] == first.summary()["train"]
    assert second.total_steps == first.total_steps
    moved = tmp_path / "elsewhere.jsonl"
    data.rename(moved)
    assert prepare(_cfg(cache, assets["llama"], moved)).cache_hit  # keyed by content, not by path


def _tokenizer_with_changed_template(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = dst / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    template = dst / "chat_template.jinja"
    if template.exists():
        template.write_text(template.read_text().replace("[EOS]", "[SEP]"))
    else:
        settings["chat_template"] = settings["chat_template"].replace("[EOS]", "[SEP]")
        config.write_text(json.dumps(settings))
    return dst


def test_changed_data_tokenizer_or_settings_build_a_new_entry(tmp_path, assets):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(40))
    base = prepare(_cfg(cache, assets["llama"], data))

    write_jsonl(data, copy_rows(41))  # same file, one row more
    grown = prepare(_cfg(cache, assets["llama"], data))
    assert not grown.cache_hit and grown.train_stats.num_rows + grown.eval_stats.num_rows == 41

    longer = prepare(_cfg(cache, assets["llama"], data, "data.max_seq_len=24"))
    assert not longer.cache_hit
    packed = prepare(_cfg(cache, assets["llama"], data, "data.packing=true"))
    assert not packed.cache_hit and "position_ids" in packed.train_examples[0]

    # The tokenizer's chat template differs: the same rows render to other tokens.
    other = _tokenizer_with_changed_template(assets["llama"], tmp_path / "other-template")
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "copy a"}, {"role": "assistant", "content": "a"}]}] * 8,
    )
    before = prepare(_cfg(cache, assets["llama"], chat))
    after = prepare(_cfg(cache, other, chat))
    assert not after.cache_hit and after.train_examples[0]["input_ids"] != before.train_examples[0]["input_ids"]

    assert len(_entries(cache)) == 6 and base.token_cache in {str(cache / e) for e in _entries(cache)}
    assert prepare(_cfg(cache, assets["llama"], data, "data.packing=true")).cache_hit  # each is kept


def test_a_failed_build_leaves_no_entry_and_a_torn_one_is_rebuilt(tmp_path, assets):
    cache = tmp_path / "cache"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "copy a ->", "completion": " a"}\n{"prompt": 3}\n')
    with pytest.raises(DataError):
        prepare(_cfg(cache, assets["llama"], bad))
    assert _entries(cache) == []

    long_prompts = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "copy " + "a " * 40 + "->", "completion": " a"}] * 4)
    with pytest.raises(DataError, match="every one of the"):
        prepare(_cfg(cache, assets["llama"], long_prompts))
    assert _entries(cache) == []  # tokenized, then refused: nothing committed, no temporary folder left

    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(40))
    entry = Path(prepare(_cfg(cache, assets["llama"], data)).token_cache)
    (entry / "meta.json").write_text('{"fmt": "prompt_')
    again = prepare(_cfg(cache, assets["llama"], data))
    assert not again.cache_hit and json.loads((entry / "meta.json").read_text())["fmt"] == "prompt_completion"


def test_a_table_travels_as_its_path_and_maps_the_same_file(tmp_path, assets):
    cache = tmp_path / "cache"
    data = write_jsonl(tmp_path / "copy.jsonl", copy_rows(400))
    examples = prepare(_cfg(cache, assets["llama"], data)).train_examples
    sent = pickle.dumps(examples)
    assert len(sent) < 1000  # a path, not ~10k tokens
    received = pickle.loads(sent)
    assert isinstance(received, TokenTable) and received.path == examples.path
    assert received[5] == examples[5] and received[-1] == examples[len(examples) - 1]
    assert received[1:4] == [examples[1], examples[2], examples[3]]
    by_value = pickle.loads(pickle.dumps(examples.detached()))
    assert by_value.path is None and list(by_value) == list(examples)


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_plain_text_is_written_a_batch_of_documents_at_a_time_with_each_documents_own_tokens(tmp_path, assets, model):
    """Pretraining text goes to the cache in batches (a corpus is never held as token lists whole); the
    batched call to the tokenizer's core gives every document exactly the tokens `tokenizer(text)` gives
    it alone (with the special tokens a masked model adds, the EOS a causal one appends), split at max_seq_len."""
    from hone.training.models import load_tokenizer
    from hone.training.tokens import PRETRAIN_BATCH_ROWS
    from tests.tiny import text_rows

    rows = text_rows(3 * PRETRAIN_BATCH_ROWS + 5)
    data = write_jsonl(tmp_path / "text.jsonl", rows)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows[:3])
    cfg = _cfg(tmp_path / "cache", assets[model], data, "mode=pretrain", f"data.eval=[{eval_file}]", "data.max_seq_len=8")
    prepared = prepare(cfg)
    tok = load_tokenizer(cfg.model, str(assets[model]))
    masked = model == "bert"
    expected = []
    for row in rows:
        ids = tok(text=row["text"], add_special_tokens=masked)["input_ids"] + ([] if masked else [tok.eos_token_id])
        expected += [ids[i : i + 8] for i in range(0, len(ids), 8) if len(ids[i : i + 8]) >= 2]
    assert [e["input_ids"] for e in prepared.train_examples] == expected
    assert prepared.train_stats.num_examples == len(expected) == len(prepared.train_examples)
    assert len(prepared.train_examples.table.to_batches()) > 1  # written in several batches
