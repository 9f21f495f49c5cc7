"""A pipeline never shows a stale result: a stage whose input model was trained again is trained again,
its held-out answers are asked again, and an edited data file is refused by name until overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.rundir import MARKER
from tests.tiny import copy_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _pipeline(tmp_path: Path, assets: dict[str, Path]) -> tuple[Path, Path]:
    data = write_jsonl(tmp_path / "first.jsonl", copy_rows(64))
    questions = write_jsonl(tmp_path / "questions.jsonl", copy_rows(4))
    common = {"data": {"max_seq_len": 32}, "train": {"max_steps": 3, "micro_batch_per_device": 8}, "eval": {"max_samples": 4}}
    spec = {
        "output_dir": str(tmp_path / "pipe"),
        "defaults": {"model": {"source": str(assets["llama"])}, **common},
        "eval": {"data": str(questions), "max_new_tokens": 4},
        "stages": [
            {"name": "first", "mode": "sft", "data": {"train": [str(data)]}},
            {"name": "second", "mode": "sft", "model": {"source": "previous"}, "data": {"train": [str(assets["copy"])]}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, data


def _state(tmp_path: Path) -> dict[str, object]:
    """What a stale result would keep: each stage's run (its marker's id is new when it is replaced) and
    the model each cached answer set was asked of."""
    pipe = tmp_path / "pipe"
    answers = json.loads((pipe / "answers.json").read_text())
    return {
        "runs": [json.loads((pipe / stage / MARKER).read_text())["run_id"] for stage in ("1-first", "2-second")],
        "answers": {name: entry["model"] for name, entry in answers.items()},
    }


def test_a_retrained_stage_reruns_what_follows_and_an_edited_file_is_refused(assets, tmp_path, capsys):
    pipeline, data = _pipeline(tmp_path, assets)
    assert main(["run", str(pipeline)]) == 0
    first = _state(tmp_path)
    assert set(first["answers"]) == {"base", "after first", "after second"}

    # A pipeline stopped just after it trained its first stage again (here by hand, with a longer run):
    # on the rerun the first stage is finished, and the second, trained on the old model, is redone.
    longer = "stages.first.train.max_steps=4"
    assert main(["run", str(tmp_path / "pipe" / "1-first" / "config.yaml"), "train.max_steps=4", "overwrite=true"]) == 0
    retrained = _state(tmp_path)["runs"][0]
    capsys.readouterr()
    assert main(["run", str(pipeline), longer]) == 0
    printed = capsys.readouterr().out
    assert "second started from an earlier" in printed
    again = _state(tmp_path)
    assert again["runs"][0] == retrained and again["runs"][1] != first["runs"][1]
    assert again["answers"]["base"] == first["answers"]["base"] and "base: answering" not in printed  # cached
    assert again["answers"]["after first"] != first["answers"]["after first"]
    assert again["answers"]["after second"] != first["answers"]["after second"]

    # A data file edited under a finished stage: refused by name, nothing changed, until overwrite.
    with data.open("a") as f:
        f.write(json.dumps(copy_rows(1)[0]) + "\n")
    assert main(["run", str(pipeline), longer]) == 1
    assert str(data) in capsys.readouterr().err
    assert _state(tmp_path) == again
    assert main(["run", str(pipeline), longer, "overwrite=true"]) == 0
    last = _state(tmp_path)
    assert all(a != b for a, b in zip(again["runs"], last["runs"], strict=True))
    assert last["answers"]["after second"] != again["answers"]["after second"]
