"""hone submit's local half (no cluster): what gets shipped, the token, the address, storage_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hone.cluster.jobs import JobsError, dashboard_address, read_token
from hone.cluster.pipeline import Stage
from hone.cluster.rundir import checkpoint_location, claim, local_checkpoints
from hone.cluster.submit import SHIPPED, _Shipment, ship_config, ship_pipeline
from hone.training.config import ConfigError, load_config


def sft(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return [
        "mode=sft",
        "model.source=org/some-model",
        f"data.train=[{tmp_path / 'train.jsonl'}]",
        f"output_dir={tmp_path / 'run'}",
        *extra,
    ]


def test_ship_config_points_every_local_path_into_the_working_dir(tmp_path):
    (tmp_path / "eval.jsonl").write_text("{}\n")
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text("def score(prompts, completions):\n    return [0.0] * len(prompts)\n")
    (tmp_path / "unrelated.bin").write_bytes(b"x" * 1000)  # in the reward's folder, but not its module
    overrides = [
        *sft(tmp_path, f"data.eval=[{tmp_path / 'eval.jsonl'}]"),
        "mode=rl",
        f"rl.rewards=[{{type: function, function: 'mine:score', path: {tmp_path / 'rewards'}}}]",
        "train.micro_batch_per_device=1",
    ]
    shipment = _Shipment(shared=[])
    try:
        raw = ship_config(load_config(None, overrides), shipment)
        assert raw["data"]["train"] == [f"{SHIPPED}/0-train.jsonl"] and raw["data"]["eval"] == [f"{SHIPPED}/1-eval.jsonl"]
        # The module goes in a folder of its own that becomes the reward's path, under its own name, so
        # `import mine` works on the cluster.
        reward = raw["rl"]["rewards"][0]
        assert (
            reward["path"] == f"{SHIPPED}/2-reward"
            and shipment.files[tmp_path / "rewards" / "mine.py"] == f"{SHIPPED}/2-reward/mine.py"
        )
        assert raw["model"]["source"] == "org/some-model"  # a hub id is fetched by the cluster
        assert raw["output_dir"] == str(tmp_path / "run")
        shipment.copy()
        assert sorted(p.name for p in (shipment.root / SHIPPED).iterdir()) == ["0-train.jsonl", "1-eval.jsonl", "2-reward"]
        assert (shipment.root / reward["path"] / "mine.py").is_file()  # where `import mine` finds it
    finally:
        shipment.remove()
    assert not shipment.root.exists()


def test_files_under_a_shared_dir_are_not_shipped_and_big_files_are_refused(tmp_path):
    cfg = load_config(None, sft(tmp_path))
    shared = _Shipment(shared=[str(tmp_path)])
    assert ship_config(cfg, shared)["data"]["train"] == [str(tmp_path / "train.jsonl")] and shared.files == {}
    shared.remove()
    shipment = _Shipment(shared=[])
    ship_config(cfg, shipment)
    with pytest.raises(
        JobsError, match=r"add up to 0\.0 MiB, over the 0\.0 MiB .*largest: .*train\.jsonl \(0\.0 MiB\).*--shared DIR"
    ):
        shipment.check_size(limit=10)
    shipment.check_size(limit=1000)
    shipment.remove()


def test_the_token_comes_from_the_file_then_the_environment_and_never_into_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert read_token(None) == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert read_token(None) == ("home-token", "~/.ray/auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert read_token(None) == ("env-token", "$RAY_AUTH_TOKEN")
    (tmp_path / "file").write_text("  file-token\n")
    assert read_token(str(tmp_path / "file")) == ("file-token", f"--token-file {tmp_path / 'file'}")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(JobsError, match="is empty") as err:
        read_token(str(tmp_path / "empty"))
    assert "env-token" not in str(err.value)
    with pytest.raises(JobsError, match="no such file"):
        read_token(str(tmp_path / "missing"))


def test_dashboard_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert dashboard_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert dashboard_address("https://ray.example.com/") == "https://ray.example.com"
    with pytest.raises(JobsError, match="pass --address http://HEAD:8265"):
        dashboard_address(None)
    with pytest.raises(JobsError, match="ray://head:10001.*Jobs API"):
        dashboard_address("ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    assert dashboard_address(None) == "http://10.0.0.1:8265"


def test_storage_path_is_checked_at_load_time(tmp_path):
    for good in ("s3://bucket/runs", "gs://bucket", str(tmp_path / "shared")):
        assert load_config(None, sft(tmp_path, f"scaling.storage_path={good}")).scaling.storage_path == good
    bad = {
        "hdfs://nn/runs": "s3://BUCKET/PATH or gs://BUCKET/PATH",
        "s3://": "s3://BUCKET/PATH",
        "relative/dir": "give an absolute path",
    }
    for value, fix in bad.items():
        with pytest.raises(ConfigError, match=rf"scaling\.storage_path='{value}' is invalid: .*{fix}"):
            load_config(None, sft(tmp_path, f"scaling.storage_path={value}"))
    with pytest.raises(ConfigError, match="mode rl keeps its checkpoints in output_dir"):
        load_config(None, sft(tmp_path, "mode=rl", "scaling.storage_path=s3://bucket/x", "rl.rewards=[{type: exact_match}]"))


def test_each_run_gets_its_own_checkpoint_folder_under_storage_path(tmp_path):
    cfg = load_config(None, sft(tmp_path))
    run_dir, _ = claim(cfg)
    assert checkpoint_location(cfg, run_dir) == (str(run_dir), "checkpoints")

    shared = tmp_path / "shared"
    cfg = load_config(None, sft(tmp_path, f"scaling.storage_path={shared}", "overwrite=true"))
    run_dir, _ = claim(cfg)
    storage, name = checkpoint_location(cfg, run_dir)
    assert storage == str(shared) and name.startswith("run-")
    assert checkpoint_location(cfg, run_dir) == (storage, name)  # a resume finds the same folder
    assert json.loads((run_dir / "storage.json").read_text()) == {"storage_path": storage, "name": name}
    (shared / name / "step_0000010").mkdir(parents=True)

    assert claim(cfg)[1] == "resume"  # the same run again resumes, overwrite or not
    changed = load_config(None, sft(tmp_path, f"scaling.storage_path={shared}", "overwrite=true", "optim.lr=1e-3"))
    run_dir, state = claim(changed)  # overwrite=true replaces a different run: its checkpoints go, the name is new
    assert state == "new" and not (shared / name).exists()
    assert checkpoint_location(changed, run_dir)[1] != name
    assert local_checkpoints("s3://bucket/runs", name) is None


def test_a_shipped_config_and_pipeline_load_on_the_cluster_side_from_the_copies(tmp_path):
    """What the job does with the working dir: load the shipped file, whose paths resolve inside it."""
    from hone.cluster.pipeline import AnswerEval, Pipeline, chained, check_answer_eval, load_pipeline

    overrides = sft(tmp_path)
    stages = [
        Stage("first", load_config(None, overrides)),
        Stage("second", load_config(None, [*overrides, "model.source=previous"])),
    ]
    for name, build in (
        ("config", lambda shipment: ship_config(stages[0].config, shipment)),
        (
            "pipeline",
            lambda shipment: ship_pipeline(
                Pipeline(tmp_path / "pipe.yaml", tmp_path / "pipe", stages, AnswerEval(str(tmp_path / "train.jsonl"))), shipment
            ),
        ),
    ):
        shipment = _Shipment(shared=[])
        raw = build(shipment)
        shipment.copy()
        (shipment.root / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        (tmp_path / "train.jsonl").rename(tmp_path / "moved.jsonl")  # the job never sees this machine's files
        try:
            if name == "config":
                loaded = [load_config(shipment.root / "config.yaml")]
            else:
                pipeline = load_pipeline(shipment.root / "config.yaml")
                assert pipeline.output_dir == tmp_path / "pipe" and [s.name for s in pipeline.stages] == ["first", "second"]
                loaded = chained(pipeline.stages)
                assert loaded[1].model.source == str(tmp_path / "run" / "model")
                questions = pipeline.eval  # the pipeline's eval: file travels too
                assert questions and Path(questions.data).parent == shipment.root / SHIPPED
                assert check_answer_eval(questions)[0] == "prompt_completion"
            assert loaded[0].data.train == [str(shipment.root / SHIPPED / "0-train.jsonl")]
            assert (shipment.root / SHIPPED / "0-train.jsonl").read_text().startswith('{"prompt"')
        finally:
            (tmp_path / "moved.jsonl").rename(tmp_path / "train.jsonl")
            shipment.remove()
