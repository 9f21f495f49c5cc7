"""Weights & Biases from the driver: one W&B run per hone run, fed from rank 0's metrics stream.

Logging from the driver rather than a worker means exactly one process logs, whatever the number of
workers or nodes, and a resumed hone run continues the same W&B run (its id is kept in the run dir).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from hone.training.config import HoneConfig, WandbConfig, to_dict
from hone.training.files import write_text


def wandb_mode(settings: WandbConfig) -> str:
    if settings.mode != "auto":
        return settings.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    def __init__(self, cfg: HoneConfig, run_dir: Path) -> None:
        self.run: Any = None
        settings = cfg.tracking.wandb
        if not settings.project or wandb_mode(settings) == "disabled":
            return
        import wandb

        mode = wandb_mode(settings)
        if settings.mode == "auto" and mode == "offline":
            # A resumed run logs into a second offline folder with the same id: both must be uploaded.
            print(
                f"hone: WANDB_API_KEY is not set, so W&B logs offline to {run_dir / 'wandb'}; upload it with "
                f"`wandb sync {run_dir / 'wandb'}/offline-run-*` (every folder: a resumed run adds one)"
            )
        id_file = run_dir / "wandb_id"
        if not id_file.exists():
            write_text(id_file, uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity or None,
            group=settings.group or None,
            tags=settings.tags or None,
            name=run_dir.name,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(run_dir),
            mode=mode,  # type: ignore[arg-type]
            config=to_dict(cfg),
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        import wandb

        before, after = summary["eval"]["before"], summary["eval"]["after"]
        table = wandb.Table(columns=["metric", "before", "after"], data=[[k, before[k], after.get(k)] for k in before])
        self.run.log({"eval/before_after": table})
        for key in before:
            self.run.summary[f"eval/before/{key}"] = before[key]
            self.run.summary[f"eval/after/{key}"] = after.get(key)
        self.run.summary["model_path"] = summary["model_path"]
        self.run.finish()
