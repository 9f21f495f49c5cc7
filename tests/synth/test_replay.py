"""Replay rows (the untuned model's own answers to general instructions): what is kept of an answer, and
a replay prompt file that is wrong is refused before anything runs, naming the file and row."""

from __future__ import annotations

import json

from hone.cluster.cli import main
from hone.synth.replay import replay_keys, replay_rows, whole_sentences


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


def test_the_cache_key_changes_with_the_model_the_prompt_and_the_length():
    base = replay_keys(["a"], "m1", 96)
    assert base == replay_keys(["a"], "m1", 96)
    assert len({*base, *replay_keys(["b"], "m1", 96), *replay_keys(["a"], "m2", 96), *replay_keys(["a"], "m1", 64)}) == 4


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
