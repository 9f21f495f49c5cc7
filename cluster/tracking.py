"""Experiment trackers from the driver: Weights & Biases, TensorBoard and MLflow, each fed from rank 0's
metrics stream, each optional (`tracking.*`).

Logging from the driver rather than a worker means exactly one process logs, whatever the number of
workers or nodes, and a resumed hone run continues the same W&B and MLflow run (their ids are kept in the
run dir). Every tracker gets the same things: the resolved config, every metrics.jsonl line as `train/*`
at its step, and at the end the held-out before/after values (`eval/before/*`, `eval/after/*`), the
before/after table and the export path.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from hone.cluster.rundir import flatten, format_table
from hone.training.config import HoneConfig, MlflowConfig, WandbConfig, to_dict
from hone.training.files import write_text


def wandb_mode(settings: WandbConfig) -> str:
    if settings.mode != "auto":
        return settings.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """Every tracker the config turns on, behind one log/finish."""

    def __init__(self, cfg: HoneConfig, run_dir: Path) -> None:
        t = cfg.tracking
        sinks: list[Any] = []
        if t.wandb.project and wandb_mode(t.wandb) != "disabled":
            sinks.append(WandbSink(cfg, run_dir))
        if t.tensorboard.enabled:
            sinks.append(TensorBoardSink(run_dir))
        if t.mlflow.experiment:
            sinks.append(MlflowSink(cfg, run_dir))
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def finish(self, summary: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.finish(summary)


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """A metrics line's values as `train/<name>`, numbers only (the step is the x axis, not a value)."""
    return {
        f"train/{k}": float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _eval_values(summary: dict[str, Any]) -> dict[str, float]:
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    values = {f"eval/before/{k}": float(v) for k, v in before.items()}
    return values | {f"eval/after/{k}": float(after[k]) for k in before if k in after}


def _id(run_dir: Path, name: str, new: Any) -> str:
    """A tracker's run id kept in the run dir, so a resumed hone run continues the same tracker run."""
    path = run_dir / name
    if not path.exists():
        write_text(path, str(new()))
    return path.read_text().strip()


class WandbSink:
    def __init__(self, cfg: HoneConfig, run_dir: Path) -> None:
        import wandb

        settings = cfg.tracking.wandb
        mode = wandb_mode(settings)
        if settings.mode == "auto" and mode == "offline":
            # A resumed run logs into a second offline folder with the same id: both must be uploaded.
            print(
                f"hone: WANDB_API_KEY is not set, so W&B logs offline to {run_dir / 'wandb'}; upload it with "
                f"`wandb sync {run_dir / 'wandb'}/offline-run-*` (every folder: a resumed run adds one)"
            )
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity or None,
            group=settings.group or None,
            tags=settings.tags or None,
            name=run_dir.name,
            id=_id(run_dir, "wandb_id", lambda: uuid.uuid4().hex[:12]),
            resume="allow",
            dir=str(run_dir),
            mode=mode,  # type: ignore[arg-type]
            config=to_dict(cfg),
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        import wandb

        before, after = summary["eval"]["before"], summary["eval"]["after"]
        table = wandb.Table(columns=["metric", "before", "after"], data=[[k, before[k], after.get(k)] for k in before])
        self.run.log({"eval/before_after": table})
        for key in before:
            self.run.summary[f"eval/before/{key}"] = before[key]
            self.run.summary[f"eval/after/{key}"] = after.get(key)
        self.run.summary["model_path"] = summary["model_path"]
        self.run.finish()


class TensorBoardSink:
    """Event files in RUN_DIR/tensorboard; the before values at step 0, the after values at the last step,
    and the table as text."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.last_step = 0

    def log(self, record: dict[str, Any]) -> None:
        for key, value in _numbers(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.last_step = max(self.last_step, int(record["step"]))

    def finish(self, summary: dict[str, Any]) -> None:
        last = max(self.last_step, int(summary.get("steps") or 0))
        for key, value in _eval_values(summary).items():
            self.writer.add_scalar(key, value, 0 if key.startswith("eval/before/") else last)
        table = format_table(summary).strip()
        self.writer.add_text("eval/before_after", "\n".join(f"    {line}" for line in table.splitlines()), last)
        self.writer.close()


class MlflowSink:
    """One MLflow run (through MlflowClient: no process-global active run): the config as params, metrics
    at their steps, eval values, and the table as the artifact before_after.txt."""

    def __init__(self, cfg: HoneConfig, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg.tracking.mlflow, run_dir)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store working but asks for this opt-in (it would rather have a database,
            # which needs the full mlflow package; mlflow-skinny is what hone installs).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.mlflow.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.tracking.mlflow.experiment)
        resumed = (run_dir / "mlflow_id").exists()
        self.run_id = _id(run_dir, "mlflow_id", lambda: self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id)
        if not resumed:
            self._params(to_dict(cfg))
        print(f"hone: MLflow run {self.run_id} in experiment {cfg.tracking.mlflow.experiment!r} at {uri}")

    def _params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(re.sub(r"[^\w./ -]", "_", k), str(v)[:6000]) for k, v in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, record: dict[str, Any]) -> None:
        self._metrics(_numbers(record), int(record["step"]))

    def _metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, summary: dict[str, Any]) -> None:
        self._metrics(_eval_values(summary), int(summary.get("steps") or 0))
        self.client.log_text(self.run_id, format_table(summary).strip() + "\n", "before_after.txt")
        self.client.set_tag(self.run_id, "model_path", str(summary.get("model_path", "")))
        self.client.set_terminated(self.run_id)


def tracking_uri(settings: MlflowConfig, run_dir: Path) -> str:
    if settings.tracking_uri:
        return settings.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return (run_dir.resolve().parent / "mlruns").as_uri()
