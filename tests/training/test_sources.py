"""data.train sources: weighted mixing gives the stated proportions (counted), a folder laid out like a hub
dataset repository is read through `datasets.load_dataset` by subset and split, and a hub id that cannot
load (no hub here) fails naming the entry. Paths and ids survive config loading, `hone submit` and keys."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hone.training.config import ConfigError, DataSource, load_config
from hone.training.data import DataError, mix, read_dataset, shares
from tests.tiny import write_jsonl

HONE = [sys.executable, "-m", "hone.cluster.cli"]
HUB_CARD = """---
configs:
- config_name: letters
  data_files:
  - {split: train, path: letters/train.jsonl}
  - {split: test, path: letters/test.jsonl}
- config_name: words
  data_files:
  - {split: train, path: words/train.jsonl}
---
# A dataset card, as on the hub
"""


def hub_folder(root: Path) -> Path:
    """A dataset repository as the hub keeps one: a card whose `configs` name each subset's files."""
    for subset in ("letters", "words"):
        (root / subset).mkdir(parents=True)
    (root / "README.md").write_text(HUB_CARD)
    conversation = [{"role": "user", "content": "copy {} ->"}], [{"role": "assistant", "content": "{}"}]
    for subset, split, items in (("letters", "train", "abcdefgh"), ("letters", "test", "ij"), ("words", "train", ["cat"])):
        rows = [
            {
                "prompt": [{**m, "content": m["content"].format(x)} for m in conversation[0]],
                "completion": [{**m, "content": m["content"].format(x)} for m in conversation[1]],
            }
            for x in items
        ]
        write_jsonl(root / subset / f"{split}.jsonl", rows)
    return root


def _data(*overrides: str):
    return load_config(None, ["model.source=x", *overrides]).data


def test_shares_add_up_and_follow_the_weights():
    assert shares(40, [1, 3]) == [10, 30]
    assert shares(10, [1, 1, 1]) == [4, 3, 3] and sum(shares(7, [0.2, 0.5, 0.3])) == 7


def test_mixing_draws_without_replacement_and_repeats_a_small_source():
    big = [{"_source": f"big:{i}"} for i in range(30)]
    small = [{"_source": f"small:{i}"} for i in range(10)]
    mixed = mix([big, small], [1.0, 3.0], seed=0)
    counts = Counter(r["_source"].split(":")[0] for r in mixed)
    assert counts == {"big": 10, "small": 30}  # 40 rows, a quarter and three quarters
    big_rows = Counter(r["_source"] for r in mixed if r["_source"].startswith("big"))
    assert max(big_rows.values()) == 1  # drawn without replacement
    assert set(Counter(r["_source"] for r in mixed if r["_source"].startswith("small")).values()) == {3}


def test_weighted_files_give_their_shares_of_the_training_rows_and_never_leak_eval_rows(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(60)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "y"} for i in range(20)])
    data = _data(f"data.train=[{{path: {a}, weight: 1}}, {{path: {b}, weight: 3}}]", "data.eval=0.1")
    fmt, train, held_out = read_dataset(data, "sft", seed=0)
    counts = Counter(Path(r["_source"].split(":")[0]).name for r in train)
    assert len(train) == 72 and counts == {"a.jsonl": 18, "b.jsonl": 54}
    assert not {r["_source"] for r in held_out} & {r["_source"] for r in train}
    # no weights: every training row once, as before
    _, plain, _ = read_dataset(_data(f"data.train=[{a}, {b}]", "data.eval=0.1"), "sft", seed=0)
    assert len(plain) == 72 and len({r["_source"] for r in plain}) == 72


def test_weights_for_some_sources_only_or_on_eval_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train=\[2\.0, 0\.0\] is invalid: give every source a weight or none"):
        _data("data.train=[{path: a.jsonl, weight: 2}, b.jsonl]")
    with pytest.raises(ConfigError, match=r"data\.eval\[0\]\.weight=2\.0 is invalid: weights mix training rows only"):
        _data("data.train=[a.jsonl]", "data.eval=[{path: e.jsonl, weight: 2}]")
    with pytest.raises(ConfigError, match=r"unknown config key data\.train\[0\]\.wieght; did you mean data\.train\[0\]\.weight"):
        _data("data.train=[{path: a.jsonl, wieght: 2}]")


def test_a_local_hub_layout_is_read_by_subset_and_split(tmp_path):
    repo = hub_folder(tmp_path / "repo")
    fmt, train, held_out = read_dataset(
        _data(f"data.train=[{{path: {repo}, subset: letters}}]", f"data.eval=[{{path: {repo}, subset: letters, split: test}}]"),
        "sft",
        seed=0,
    )
    assert fmt == "messages" and len(train) == 8 and len(held_out) == 2
    assert train[0]["_source"] == f"{repo}[train]:row 0"
    with pytest.raises(DataError, match=r"repo \(split 'train', subset 'nope'\): the local dataset folder did not load"):
        read_dataset(_data(f"data.train=[{{path: {repo}, subset: nope}}]"), "sft", seed=0)
    # named as a plain path, its card still decides (not read as a folder of .md text): datasets asks which subset
    with pytest.raises(
        DataError, match=r"(?s)repo \(split 'train'\): the local dataset folder did not load: .*letters.*; a subset or split"
    ):
        read_dataset(_data(f"data.train=[{repo}]"), "sft", seed=0)


def test_a_hub_id_stays_an_id_and_fails_by_name_without_the_hub(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "run.yaml").write_text(
        "mode: sft\nmodel: {source: org/model}\ndata: {train: [some-org/some-data, docs, {path: other-org/more, split: dev}]}\n"
    )
    train = load_config(str(tmp_path / "run.yaml")).data.train
    assert train == ["some-org/some-data", str(tmp_path / "docs"), DataSource(path="other-org/more", split="dev")]
    # As a user without the hub sees it (the hub library reads HF_HUB_OFFLINE once, at import)
    (tmp_path / "hub.yaml").write_text("mode: sft\nmodel: {source: org/model}\ndata: {train: [some-org/some-data]}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*HONE, "validate", "hub.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "data source some-org/some-data (split 'train'): the hub dataset did not load: " in done.stderr
    # a missing local file is still a missing file, not a hub id
    with pytest.raises(DataError, match=r"data file .*missing/train\.jsonl does not exist"):
        read_dataset(_data(f"data.train=[{tmp_path / 'missing/train.jsonl'}]"), "sft", seed=0)


def test_hub_ids_travel_as_ids_and_sources_key_the_token_cache(tmp_path):
    from hone.cluster.submit import _Shipment, ship_config
    from hone.training.token_cache import cache_key

    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}] * 4)
    cfg = load_config(None, ["model.source=x", f"data.train=[{{path: org/name, weight: 1}}, {{path: {a}, weight: 2}}]"])
    shipment = _Shipment([])
    shipped = ship_config(cfg, shipment)["data"]["train"]
    assert shipped[0]["path"] == "org/name" and shipped[1]["weight"] == 2.0 and shipped[1]["path"] != str(a)
    keys = {
        cache_key(
            load_config(None, ["model.source=x", f"data.train=[{{path: {a}, weight: {w}}}, {{path: org/name, weight: 1}}]"])
        )
        for w in (1, 2)
    }
    assert len(keys) == 2 and os.path.exists(a)
    # a hub-layout folder is keyed by its data files, not only its card
    repo = hub_folder(tmp_path / "repo")
    source = f"data.train=[{{path: {repo}, subset: letters}}]"
    before = cache_key(load_config(None, ["model.source=x", source]))
    write_jsonl(repo / "letters" / "train.jsonl", [{"prompt": [], "completion": []}])
    assert cache_key(load_config(None, ["model.source=x", source])) != before
