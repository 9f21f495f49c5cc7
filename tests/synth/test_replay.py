"""Replay rows (the untuned model's own answers to general instructions): what is kept of an answer, and
a replay prompt file that is wrong is refused before anything runs, naming the file and row."""

from __future__ import annotations

import json

import pytest

from hone.cluster.cli import main
from hone.synth.replay import replay_requests, replay_rows, whole_sentences
from hone.training.config import ConfigError, load_config


def test_an_answer_cut_at_the_token_limit_keeps_its_whole_sentences_only():
    assert whole_sentences("Paris is the capital. It lies on the Seine and") == "Paris is the capital."
    assert whole_sentences("Yes! Of course. ") == "Yes! Of course."
    assert whole_sentences("no sentence end here") == "no sentence end here"
    assert whole_sentences("3.5 is a number. Another") == "3.5 is a number."


def test_replay_rows_are_chat_rows_and_skip_empty_answers():
    rows = replay_rows(["Say hi.", "Say nothing."], ["Hi there. And", "   "], "/x/general.jsonl")
    assert rows == [
        {
            "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there."}],
            "source": "general.jsonl",
            "kind": "replay",
        }
    ]


def replay_keys(prompts: list[str], model: str, max_new_tokens: int, temperature: float = 0.0, samples: int = 1) -> list[str]:
    return [r.key for r in replay_requests(prompts, model, max_new_tokens, temperature, samples)]


def test_the_cache_key_changes_with_the_model_the_prompt_the_length_and_the_sampling():
    base = replay_keys(["a"], "m1", 96)
    assert base == replay_keys(["a"], "m1", 96)
    others = [
        replay_keys(["b"], "m1", 96),
        replay_keys(["a"], "m2", 96),
        replay_keys(["a"], "m1", 64),
        replay_keys(["a"], "m1", 96, temperature=1.0),
    ]
    assert len({*base, *(k for keys in others for k in keys)}) == 5
    sampled = replay_requests(["a", "b"], "m1", 96, temperature=1.0, samples=3)
    assert [r.prompt for r in sampled] == ["a", "a", "a", "b", "b", "b"]  # one request per sample, each its own key
    assert len({r.key for r in sampled}) == 6 and sampled[0].key == others[3][0]


def test_several_greedy_samples_are_refused_at_load(assets):
    args = [f"model.source={assets['llama']}", "mode=synth", "data.train=[x]", "synth.replay_samples=4"]
    with pytest.raises(ConfigError, match=r"synth\.replay_samples=4 is invalid: greedy answers to one prompt are all the same"):
        load_config(None, args)


def test_a_replay_prompt_row_without_a_prompt_is_refused_by_validate(tmp_path, assets, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe desk answers on extension 2718.\n")
    prompts = tmp_path / "general.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"question": "Say bye."}) + "\n")
    config = tmp_path / "synth.yaml"
    config.write_text("mode: synth\n")
    args = [f"model.source={assets['llama']}", f"data.train=[{docs}]", f"synth.replay_prompts={prompts}"]
    assert main(["validate", str(config), *args]) == 1
    err = capsys.readouterr().err
    assert "general.jsonl row 2: needs a non-empty 'prompt' string" in err


def test_validate_names_the_generation_engine_and_why(tmp_path, assets, capsys):
    from hone.training.generation import vllm_available

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe desk answers on extension 2718.\n")
    prompts = tmp_path / "general.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    config = tmp_path / "synth.yaml"
    config.write_text("mode: synth\n")
    args = [f"model.source={assets['llama']}", f"data.train=[{docs}]", f"synth.replay_prompts={prompts}"]
    assert main(["validate", str(config), *args, "generation.backend=hf"]) == 0
    assert "# generation engine: hf (generation.backend is hf)" in capsys.readouterr().out
    if not vllm_available():
        assert main(["validate", str(config), *args]) == 0
        assert "# generation engine: hf (the vllm package is not installed)" in capsys.readouterr().out
        assert main(["validate", str(config), *args, "generation.backend=vllm"]) == 1
        assert "generation.backend is vllm but the vllm package is not installed" in capsys.readouterr().err
