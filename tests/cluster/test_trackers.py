"""TensorBoard and MLflow get what W&B gets: every metrics line at its step, the held-out before/after
values and table, the config; a resumed run continues the same MLflow run. Read back from the files."""

from __future__ import annotations

from pathlib import Path

from hone.cluster.tracking import Tracker
from hone.training.config import load_config

RECORDS = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "tokens": 100 * s} for s in (1, 2, 3)]
SUMMARY = {
    "steps": 3,
    "model_path": "/runs/r/model",
    "eval": {"before": {"loss": 2.5, "exact_match": 0.0}, "after": {"loss": 0.5, "exact_match": 0.75}},
}


def _cfg(run_dir: Path):
    return load_config(
        None,
        [
            "model.source=x", "data.train=[x]", f"output_dir={run_dir}", "optim.lr=1e-3",
            "tracking.tensorboard.enabled=true", "tracking.mlflow.experiment=hone-tests",
        ],
    )  # fmt: skip


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_and_mlflow_get_every_metric_and_the_before_after_values(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    first = Tracker(_cfg(run_dir), run_dir)
    for record in RECORDS[:2]:
        first.log(record)
    # the run was stopped and resumed: the same MLflow run goes on
    resumed = Tracker(_cfg(run_dir), run_dir)
    resumed.log(RECORDS[2])
    resumed.finish(SUMMARY)

    scalars = _scalars(run_dir / "tensorboard")
    assert [(s, round(v, 6)) for s, v in scalars["train/loss"]] == [(1, 2.0), (2, 1.0), (3, round(2 / 3, 6))]
    assert scalars["eval/before/loss"] == [(0, 2.5)] and scalars["eval/after/exact_match"] == [(3, 0.75)]

    client = MlflowClient((tmp_path / "runs" / "mlruns").as_uri())  # beside the run dir, by default
    [run] = client.search_runs([client.get_experiment_by_name("hone-tests").experiment_id])
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.info.run_id == (run_dir / "mlflow_id").read_text().strip()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 2.0), (2, 1.0), (3, round(2 / 3, 6))]
    assert run.data.metrics["eval/after/loss"] == 0.5 and run.data.metrics["eval/before/exact_match"] == 0.0
    assert run.data.params["optim.lr"] == "0.001" and run.data.tags["model_path"] == "/runs/r/model"
    table = Path(client.download_artifacts(run.info.run_id, "before_after.txt", str(tmp_path))).read_text()
    assert "held-out metric" in table and "0.7500" in table
