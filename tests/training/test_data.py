"""Bad input gets an error naming the file, the row or field, and the fix."""

import json

import datasets
import pytest

from hone.training.config import load_config
from hone.training.data import DataError, detect_format, load_rows, read_dataset
from hone.training.prepare import prepare


def write(path, text):
    path.write_text(text)
    return path


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl does not exist: check data\.train"):
        load_rows([str(tmp_path / "nope.jsonl")])


def test_empty_data_file(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl holds no rows: add examples"):
        load_rows([str(empty)])


def test_malformed_jsonl_line_is_named(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON .*fix or delete line 3"):
        load_rows([str(bad)])


def test_row_missing_a_field_of_the_detected_format(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c"}]
    path = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["model.source=/m", f"data.train=[{path}]"])
    with pytest.raises(
        DataError, match=r"pairs\.jsonl:2: row is missing field 'completion' needed by format 'prompt_completion'"
    ):
        read_dataset(cfg.data, "sft", 0)


def test_unknown_format_lists_what_is_accepted(tmp_path):
    path = write(tmp_path / "q.jsonl", '{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: cannot tell the data format from fields \['answer', 'question'\]"):
        detect_format(load_rows([str(path)]), "auto")


def test_mode_and_format_must_agree(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a b"}\n{"text": "c d"}\n')
    cfg = load_config(None, ["model.source=/m", f"data.train=[{path}]"])
    with pytest.raises(DataError, match="use mode: pretrain for unlabeled text"):
        read_dataset(cfg.data, "sft", 0)


def test_every_example_longer_than_max_seq_len(tmp_path, assets):
    rows = [{"prompt": "copy " + "a " * 40 + "->", "completion": " a"} for _ in range(4)]
    path = write(tmp_path / "long.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"model.source={assets['llama']}", f"data.train=[{path}]", "data.max_seq_len=16"])
    with pytest.raises(DataError, match=r"every one of the 3 examples was dropped .*raise data\.max_seq_len"):
        prepare(cfg)


def test_missing_model_path(tmp_path, assets):
    from hone.training.models import ModelSourceError

    cfg = load_config(None, [f"model.source={tmp_path / 'no-model'}", f"data.train=[{assets['copy']}]"])
    with pytest.raises(ModelSourceError, match=r"no-model does not exist; point it at a model directory or \.gguf file"):
        prepare(cfg)


def test_every_file_kind_loads(tmp_path):
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "a.csv"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "one.md").write_text("# handbook\ntext")
    (docs / "sub" / "two.txt").write_text("more text")
    for name in ("a.json", "a.csv", "a.parquet", "saved"):
        loaded = load_rows([str(tmp_path / name)])
        assert [(r["prompt"], r["completion"]) for r in loaded] == [("p1", "c1"), ("p2", "c2")], name
    texts = load_rows([str(docs)])
    assert [r["text"] for r in texts] == ["# handbook\ntext", "more text"]
    assert detect_format(texts, "auto") == "text"


def test_csv_errors_name_the_spreadsheet_row(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\nx,y\nz,\n")
    cfg = load_config(None, ["model.source=/m", f"data.train=[{tmp_path / 'a.csv'}]"])
    with pytest.raises(DataError, match=r"a\.csv:row 3: row is missing field 'completion'"):
        read_dataset(cfg.data, "sft", 0)


def test_eval_split_is_a_seeded_fraction_or_the_eval_files(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_file = write(tmp_path / "eval.jsonl", '{"prompt": "q", "completion": "a"}\n')
    cfg = load_config(None, ["model.source=/m", f"data.train=[{train_file}]", "data.eval=0.25"])
    _, train, held = read_dataset(cfg.data, "sft", seed=1)
    assert len(train) == 15 and len(held) == 5
    assert {r["prompt"] for r in held} == {r["prompt"] for r in read_dataset(cfg.data, "sft", seed=1)[2]}
    assert {r["prompt"] for r in held} != {r["prompt"] for r in read_dataset(cfg.data, "sft", seed=2)[2]}
    cfg = load_config(None, ["model.source=/m", f"data.train=[{train_file}]", f"data.eval=[{eval_file}]"])
    _, train, held = read_dataset(cfg.data, "sft", seed=1)
    assert len(train) == 20 and [r["prompt"] for r in held] == ["q"]


def test_a_text_folder_is_read_file_by_file_when_its_text_is_asked_for(tmp_path):
    """A corpus folder is not held whole: a row keeps its file's path and reads the text on each access."""
    import pickle

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Handbook\nLeave is 30 days.\n")
    (docs / "empty.txt").write_text("")
    rows = load_rows([str(docs)])
    assert len(rows) == 1 and not dict.__contains__(rows[0], "text") and "text" in rows[0]
    assert rows[0]["text"] == "# Handbook\nLeave is 30 days.\n"
    (docs / "a.md").write_text("changed")
    assert rows[0]["text"] == "changed" and pickle.loads(pickle.dumps(rows[0]))["text"] == "changed"
    assert rows[0].get("_source") == str(docs / "a.md")
