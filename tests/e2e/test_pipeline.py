"""A 3-stage pipeline (pretrain -> sft -> rl) on a tiny model: each stage starts from the previous
stage's export, the summary holds every stage's before/after, and a rerun resumes at the first
unfinished stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.pipeline import load_pipeline
from hone.training.config import ConfigError
from tests.processes import kill_session
from tests.rl.conftest import letter_prompts
from tests.tiny import write_jsonl


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


@pytest.mark.slow
def test_three_stage_pipeline_chains_models_and_resumes_after_a_kill_in_stage_two(assets, tmp_path):
    path = _pipeline_file(tmp_path, assets)
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["train"] |= {"max_steps": 150}  # long enough to be killed mid-stage
    spec["stages"][1]["checkpoint"] = {"every_steps": 10}
    path.write_text(yaml.safe_dump(spec))
    pipe = tmp_path / "pipe"
    sft_metrics = pipe / "2-sft" / "metrics.jsonl"

    first = subprocess.Popen(_command(path), cwd=tmp_path, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 400
    while not (sft_metrics.exists() and len(sft_metrics.read_text().splitlines()) >= 25):
        assert first.poll() is None and time.monotonic() < deadline, "the pipeline ended before it could be interrupted"
        time.sleep(0.05)
    kill_session(first.pid)
    first.wait()
    pretrain_model = pipe / "1-pretrain" / "model" / "config.json"
    pretrain_mtime = pretrain_model.stat().st_mtime
    assert not (pipe / "2-sft" / "summary.json").exists()

    second = subprocess.run(_command(path), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1-pretrain already holds this finished run" in second.stdout  # stage 1 is not trained again
    assert pretrain_model.stat().st_mtime == pretrain_mtime
    assert "resumed from step" in second.stdout + second.stderr  # stage 2 picks up from its checkpoint

    saved = json.loads((pipe / "pipeline.json").read_text())["stages"]
    assert [s["name"] for s in saved] == ["pretrain", "sft", "rl"] and [s["status"] for s in saved] == ["finished"] * 3
    for previous, stage in zip(saved[:-1], saved[1:], strict=True):
        config = yaml.safe_load((Path(stage["run_dir"]) / "config.yaml").read_text())
        assert config["model"]["source"] == str(Path(previous["run_dir"]) / "model")  # starts from the last export
    assert "perplexity" in saved[0]["eval"]["before"] and "exact_match" in saved[1]["eval"]["after"]
    assert "mean_reward" in saved[2]["eval"]["after"]
    assert "pipeline: held-out evaluation of each stage" in second.stdout


def _command(path: Path) -> list[str]:
    return [sys.executable, "-m", "hone.cluster.cli", "run", str(path)]


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu"}


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
