"""Bad RL input fails before any actor starts, naming the reward, the file and row, and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hone.rl.prepare import prepare_rl
from hone.rl.reward_model import RewardModel
from hone.rl.rewards import RewardError
from hone.training.config import ConfigError, load_config
from hone.training.data import DataError
from tests.rl.conftest import rl_overrides
from tests.tiny import VOCAB, make_tokenizer, write_jsonl


def _cfg(assets, prompts, tmp_path, *extra):
    return load_config(None, rl_overrides(assets, prompts, tmp_path / "run", *extra))


def _function_reward(tmp_path: Path, body: str, name: str = "score") -> str:
    module = "rewards_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)  # one module per test
    (tmp_path / f"{module}.py").write_text(body)
    return f"rl.rewards=[{{type: function, function: '{module}:{name}', path: '{tmp_path}'}}]"


def test_reward_function_that_does_not_import(assets, prompts, tmp_path):
    spec = "rl.rewards=[{type: function, function: 'no_such_module:score'}]"
    with pytest.raises(
        RewardError, match=r"rl.rewards\[0\].function='no_such_module:score': cannot import module 'no_such_module'"
    ):
        prepare_rl(_cfg(assets, prompts, tmp_path, spec))


def test_reward_function_missing_from_its_module(assets, prompts, tmp_path):
    spec = _function_reward(tmp_path, "def other(prompts, completions, **f):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardError, match="has no function 'score'"):
        prepare_rl(_cfg(assets, prompts, tmp_path, spec))


def test_reward_function_with_the_wrong_signature(assets, prompts, tmp_path):
    spec = _function_reward(tmp_path, "def score(texts):\n    return [0.0] * len(texts)\n")
    with pytest.raises(RewardError, match=r"wrong signature \(texts\).*def fn\(prompts, completions, \*\*fields\)"):
        prepare_rl(_cfg(assets, prompts, tmp_path, spec))


def test_prompts_missing_a_field_a_reward_reads(assets, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "copy a ->", "answer": "a"}, {"prompt": "copy b ->"}] * 4)
    with pytest.raises(DataError, match=r"p.jsonl:2: reward 'exact_match' \(rl.rewards\[1\]\) reads field 'answer'"):
        prepare_rl(_cfg(assets, prompts, tmp_path))
    # A user function's named parameters are fields too.
    spec = _function_reward(tmp_path, "def score(prompts, completions, difficulty, **f):\n    return [0.0] * len(completions)\n")
    with pytest.raises(DataError, match=r"reads field 'difficulty', which this prompt row lacks"):
        prepare_rl(_cfg(assets, prompts, tmp_path, spec))


def test_group_size_one_is_refused(assets, prompts, tmp_path):
    with pytest.raises(ConfigError, match=r"rl.group_size=1 is invalid: advantage grpo compares each completion"):
        _cfg(assets, prompts, tmp_path, "rl.group_size=1")


def test_prompt_rows_without_prompt_or_messages(assets, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"question": "copy a ->", "answer": "a"}] * 4)
    with pytest.raises(DataError, match=r"p.jsonl:1: an RL prompt row needs a 'prompt' string or chat 'messages'"):
        prepare_rl(_cfg(assets, prompts, tmp_path))


def test_every_prompt_too_long(assets, prompts, tmp_path):
    with pytest.raises(DataError, match=r"every training prompt is longer than data.max_seq_len \(3\)"):
        prepare_rl(_cfg(assets, prompts, tmp_path, "data.max_seq_len=3", "rl.generation.max_new_tokens=1"))


def _reward_model(path: Path, extra_tokens: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(path)
    if extra_tokens:
        tok.add_tokens([f"word{i}" for i in range(extra_tokens)])
    tok.save_pretrained(path)
    return path


def test_reward_model_whose_tokenizer_does_not_match(assets, prompts, tmp_path):
    model = _reward_model(tmp_path / "rm", extra_tokens=5)
    with pytest.raises(RewardError, match=r"its tokenizer has \d+ tokens but the model's embeddings hold \d+"):
        prepare_rl(_cfg(assets, prompts, tmp_path, f"rl.rewards=[{{type: model, source: '{model}'}}]"))


def test_reward_model_that_is_not_a_classifier(assets, prompts, tmp_path):
    with pytest.raises(RewardError, match="not a sequence classifier"):
        prepare_rl(_cfg(assets, prompts, tmp_path, f"rl.rewards=[{{type: model, source: '{assets['llama']}'}}]"))


def test_reward_model_scores_prompt_and_completion(assets, prompts, tmp_path):
    model = _reward_model(tmp_path / "rm")
    prepared = prepare_rl(_cfg(assets, prompts, tmp_path, f"rl.rewards=[{{type: model, source: '{model}'}}]"))
    assert prepared.train_prompts
    scores = RewardModel(str(model), batch_size=2)(["copy a ->", "copy b ->", "copy c ->"], [" a", " b b b", " c"])
    assert len(scores) == 3 and len(set(scores)) > 1  # real, input-dependent scores


def test_validate_rl_prints_prompts_rewards_and_steps(assets, prompts, tmp_path, capsys):
    from hone.cluster.cli import main

    config = tmp_path / "rl.yaml"
    config.write_text("{}\n")
    assert main(["validate", str(config), *rl_overrides(assets, prompts, tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "108 train, 12 held out" in out and "letter_first x 1, exact_match x 1" in out and "total steps:      12" in out
    assert not (tmp_path / "run").exists()
    assert main(["validate", str(config), *rl_overrides(assets, prompts, tmp_path / "run"), "generation.backend=hf"]) == 0
    assert "rollout engine:   hf (generation.backend is hf)" in capsys.readouterr().out
