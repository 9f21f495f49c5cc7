"""Checkpoints: DeepSpeed engine state plus the step, reported to Ray Train.

Every rank saves its own shard to a local temp dir and reports it; Ray Train merges the ranks' files
into one checkpoint folder under the run's storage and *registers* it only when all ranks reported.
A rerun resumes from the last registered checkpoint, so a half-written folder is never trusted.
The data position is the step itself (training/batches.py derives the order from it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

TAG = "state"
STATE_FILE = "hone_state.json"


def save_checkpoint(engine: Any, step: int, rank: int, metrics: dict[str, Any]) -> None:
    import ray.train
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="hone-ckpt-"))
    try:
        engine.save_checkpoint(str(tmp), tag=TAG)
        # Dropout draws from torch's RNG: restoring it makes a resumed run match an uninterrupted one.
        torch.save(torch.get_rng_state(), tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
        checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:07d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(engine: Any, checkpoint: Any, rank: int, start_from: str | None = None, cfg: Any = None) -> int:
    """Restore engine, LR schedule and RNG from Ray Train's last registered checkpoint; return its step.

    With no registered checkpoint, `start_from` (a folder holding another run's checkpoint: under `hone
    tune` with PBT, a copy of the trial this one clones) is loaded instead, and this run's optimizer
    settings replace the ones saved in it."""
    if checkpoint is None and start_from:
        import ray.train

        step = load_checkpoint(engine, ray.train.Checkpoint.from_directory(start_from), rank)
        apply_optim_settings(engine, cfg)
        return step
    if checkpoint is None:
        return 0
    import torch

    with checkpoint.as_directory() as folder:
        path = Path(folder)
        state = json.loads((path / STATE_FILE).read_text())
        engine.load_checkpoint(str(path), tag=TAG)
        rng = path / f"rng_rank{rank}.pt"
        if rng.exists():
            torch.set_rng_state(torch.load(rng))
    print(f"hone: rank {rank} resumed from step {state['step']} ({path.name})", flush=True)
    return int(state["step"])


def apply_optim_settings(engine: Any, cfg: Any) -> None:
    """Loading an optimizer restores the hyperparameters it was saved with (torch keeps lr, betas and
    weight decay in its param groups, the LR schedule keeps its base LR). A cloned checkpoint must train
    on with this run's settings, so they are written back; the Adam moments and the step count stay."""
    opt, schedule = cfg.optim, engine.lr_scheduler
    # The schedule's multiplier is this run's own (a LambdaLR does not save its function), at the
    # restored step.
    lr = opt.lr * schedule.lr_lambdas[0](schedule.last_epoch)
    for group in engine.optimizer.param_groups:
        group.update(lr=lr, initial_lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas))
    schedule.base_lrs = [opt.lr] * len(schedule.base_lrs)
    schedule._last_lr = [lr] * len(schedule.base_lrs)
