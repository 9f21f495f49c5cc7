"""Bad preference data stops before Ray starts, with an error naming the file, the row and the fix."""

import json

import pytest

from hone.training.config import load_config
from hone.training.data import DataError, DataWarning, read_dataset
from hone.training.prepare import prepare
from hone.training.tokens import build_preference
from tests.tiny import make_tokenizer


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(path, mode, *extra, model="/m"):
    return load_config(None, [f"mode={mode}", f"model.source={model}", f"data.train=[{path}]", *extra])


GOOD = {"prompt": "copy a b ->", "chosen": " a b", "rejected": " c d"}


@pytest.mark.parametrize("mode", ["dpo", "reward"])
def test_row_missing_chosen_names_file_and_line(tmp_path, mode):
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD, GOOD, {"prompt": "copy a ->", "rejected": " b"}, GOOD])
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: row is missing field 'chosen' needed by format 'preference'"):
        read_dataset(config(path, mode).data, mode, 0)


def test_first_row_missing_rejected_names_line_one(tmp_path):
    # The format is not guessed from the first row in preference modes, so its own line is named.
    path = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "copy a ->", "chosen": " a"}, GOOD])
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: row is missing field 'rejected'"):
        read_dataset(config(path, "dpo").data, "dpo", 0)


def test_prompt_completion_rows_are_not_pairs(tmp_path):
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}] * 2)
    with pytest.raises(DataError, match=r"sft\.jsonl:1: row is missing field 'chosen'"):
        read_dataset(config(path, "reward").data, "reward", 0)


def test_pairs_in_sft_mode_point_at_the_preference_modes(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD, GOOD])
    with pytest.raises(DataError, match="chosen/rejected pairs train with mode: dpo or mode: reward, not mode sft"):
        read_dataset(config(path, "sft").data, "sft", 0)


def test_reply_type_must_match_the_prompt(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD, {**GOOD, "rejected": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: 'rejected' must be a string when 'prompt' is a string, got list"):
        read_dataset(config(path, "dpo").data, "dpo", 0)


def test_chat_prompt_must_be_messages(tmp_path):
    bad = {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD, bad])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: 'prompt' must be a list of \{'role': \.\.\., 'content': \.\.\.\}"):
        read_dataset(config(path, "dpo").data, "dpo", 0)


def test_identical_chosen_and_rejected_warn_with_the_first_row():
    rows = [
        {**GOOD, "_source": "p.jsonl:1"},
        {**GOOD, "chosen": " c d", "_source": "p.jsonl:2"},
        {**GOOD, "_source": "p.jsonl:3"},
    ]
    with pytest.warns(DataWarning, match=r"p\.jsonl:2: chosen and rejected are identical in 1 pair\(s\).*fix or remove"):
        examples, _ = build_preference(rows, make_tokenizer(), 32, "dpo")
    assert len(examples) == 3  # kept: the warning is advice, not an error


@pytest.mark.parametrize("mode", ["dpo", "reward"])
def test_every_pair_too_long_for_max_seq_len(tmp_path, assets, mode):
    rows = [{"prompt": "copy " + "a " * 20 + "->", "chosen": " a", "rejected": " b"} for _ in range(4)]
    path = write_rows(tmp_path / "long.jsonl", rows)
    cfg = config(path, mode, "data.max_seq_len=12", model=assets["llama"])
    with pytest.raises(DataError, match=r"every one of the 3 examples was dropped .*raise data\.max_seq_len"):
        prepare(cfg)


def test_dpo_truncates_long_replies_and_reward_drops_them():
    row = {"prompt": "copy a ->", "chosen": " a a a a a a", "rejected": " b", "_source": "p.jsonl:1"}
    tok = make_tokenizer()
    [example], stats = build_preference([row], tok, 5, "dpo")
    assert len(example["prompt_ids"]) + len(example["chosen_ids"]) == 5 and stats.num_truncated == 1
    examples, stats = build_preference([row], tok, 5, "reward")
    assert examples == [] and stats.dropped == {"prompt + chosen or rejected longer than max_seq_len": 1}


def test_packing_does_not_apply_to_pairs(tmp_path, assets):
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD] * 4)
    with pytest.raises(DataError, match="data.packing=true does not apply to mode dpo.*set data.packing=false"):
        prepare(config(path, "dpo", "data.packing=true", model=assets["llama"]))


def test_preference_modes_need_a_causal_model(tmp_path, assets):
    path = write_rows(tmp_path / "pairs.jsonl", [GOOD] * 4)
    with pytest.raises(DataError, match="mode reward needs a causal \\(decoder\\) model"):
        prepare(config(path, "reward", model=assets["bert"]))
