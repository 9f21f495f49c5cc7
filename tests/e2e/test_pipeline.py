"""A 3-stage pipeline (pretrain -> sft -> rl) on a tiny model: each stage starts from the previous
stage's export, the summary holds every stage's before/after, and a rerun resumes at the first
unfinished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.pipeline import load_pipeline, run_pipeline
from tests.rl.conftest import letter_prompts
from tests.tiny import write_jsonl
from training.config import ConfigError


def _pipeline_file(tmp_path: Path, assets: dict[str, Path]) -> Path:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", letter_prompts(80))
    spec = {
        "output_dir": str(tmp_path / "pipe"),
        "defaults": {"model": {"source": str(assets["llama"])}, "data": {"max_seq_len": 32}, "optim": {"lr": 3e-3}},
        "stages": [
            {"name": "pretrain", "mode": "pretrain", "data": {"train": [str(assets["text"])]}, "train": {"max_steps": 8}},
            {
                "name": "sft",
                "mode": "sft",
                "model": {"source": "previous"},
                "data": {"train": [str(assets["copy"])]},
                "train": {"max_steps": 10, "micro_batch_per_device": 8},
                "eval": {"max_new_tokens": 6, "max_samples": 8},
            },
            {
                "name": "rl",
                "mode": "rl",
                "model": {"source": "previous"},
                "data": {"train": [str(prompts)], "max_seq_len": 16},
                "optim": {"lr": 1e-2, "decay": "constant"},
                "train": {"max_steps": 4, "micro_batch_per_device": 16},
                "eval": {"max_samples": 8},
                "rl": {
                    "group_size": 4,
                    "prompts_per_step": 8,
                    "generation": {"max_new_tokens": 2},
                    "reward": {"cpus": 0},
                    "rewards": [{"type": "regex", "pattern": "^[a-p]( |$)"}],
                },
            },
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_three_stage_pipeline_chains_models_and_resumes(assets, tmp_path, local_ray):
    path = _pipeline_file(tmp_path, assets)
    result = run_pipeline(path)

    stages = result["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "sft", "rl"]
    for previous, stage in zip(stages[:-1], stages[1:], strict=True):
        config = yaml.safe_load((Path(stage["run_dir"]) / "config.yaml").read_text())
        assert config["model"]["source"] == str(Path(previous["run_dir"]) / "model")  # starts from the last export
    assert "perplexity" in stages[0]["eval"]["before"] and "exact_match" in stages[1]["eval"]["after"]
    assert "mean_reward" in stages[2]["eval"]["after"]
    saved = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert [s["status"] for s in saved["stages"]] == ["finished"] * 3

    # A stage that did not finish (its summary gone, as after a kill in stage 2) is run again; the
    # finished stage before it is not.
    (Path(stages[1]["run_dir"]) / "summary.json").unlink()
    (Path(stages[2]["run_dir"]) / "summary.json").unlink()
    pretrain_mtime = (Path(stages[0]["run_dir"]) / "model" / "config.json").stat().st_mtime
    again = run_pipeline(path)
    assert (Path(stages[0]["run_dir"]) / "model" / "config.json").stat().st_mtime == pretrain_mtime
    assert [s["name"] for s in again["stages"]] == ["pretrain", "sft", "rl"]


def test_previous_in_the_first_stage_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({"stages": [{"mode": "sft", "model": {"source": "previous"}, "data": {"train": ["x.jsonl"]}}]})
    )
    with pytest.raises(ConfigError, match=r"stage 1: model.source: previous needs a stage before it"):
        load_pipeline(path)


def test_a_bad_stage_is_reported_before_any_stage_trains(assets, tmp_path, capsys):
    path = _pipeline_file(tmp_path, assets)
    spec = yaml.safe_load(path.read_text())
    spec["stages"][2]["rl"]["rewards"] = [{"type": "exact_match", "field": "solution"}]  # no row has it
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path)]) == 1
    assert "reads field 'solution'" in capsys.readouterr().err
    assert not (tmp_path / "pipe").exists()  # nothing trained, nothing written
