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
from typing import Any, NamedTuple

TAG = "state"
STATE_FILE = "hone_state.json"
# Written by rank 0 into the stored checkpoint once every rank's report returned: the folder is complete.
# Ray Train registers a checkpoint only on its controller's next poll (~2 s later), so a run stopped in
# between leaves a complete folder Ray does not list; this marker, not Ray's list, says it may be kept.
COMMITTED = ".hone-committed"


def save_checkpoint(
    engine: Any,
    step: int,
    rank: int,
    metrics: dict[str, Any],
    run_dir: str,
    stored_in: str | None = None,
    records: list[dict[str, Any]] | None = None,
) -> None:
    """Save and report this rank's shard. It is staged under the run dir (shared storage, not the pod's
    ephemeral /tmp, which a big shard can fill until the kubelet evicts the pod); `stored_in` is the
    checkpoint folder on a filesystem this worker sees, where the commit marker goes (None: a bucket).

    `records` (rank 0) are the per-step metrics since the previous checkpoint. The driver writes
    metrics.jsonl up to a poll behind the workers, so a run killed just after a checkpoint has a file
    that ends a few steps short of it; the resumed run replays these to fill that gap."""
    import ray.train
    import torch
    import torch.distributed as dist

    staging = Path(run_dir) / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"rank{rank}-", dir=staging))
    try:
        engine.save_checkpoint(str(tmp), tag=TAG)
        # Dropout draws from torch's RNG: restoring it makes a resumed run match an uninterrupted one.
        torch.save(torch.get_rng_state(), tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "metrics": records or []}))
        checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(step))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()  # every rank's files are in the stored folder
    if rank == 0 and stored_in:
        marker = Path(stored_in) / checkpoint_name(step) / COMMITTED
        if marker.parent.is_dir():
            marker.write_text("")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def saved_step(folder: Path) -> int:
    return int(json.loads((folder / STATE_FILE).read_text())["step"])


def saved_records(folder: Path) -> list[dict[str, Any]]:
    """The per-step metrics a checkpoint carries (none in one saved before hone kept them)."""
    return list(json.loads((folder / STATE_FILE).read_text()).get("metrics", []))


class Restored(NamedTuple):
    step: int  # 0: nothing to resume from
    records: list[dict[str, Any]]  # this run's metrics of the steps before `step` the checkpoint carries


def load_checkpoint(
    engine: Any, checkpoint: Any, rank: int, start_from: str | None = None, cfg: Any = None, committed: str | None = None
) -> Restored:
    """Restore engine, LR schedule and RNG from Ray Train's last registered checkpoint; return its step
    and the metrics it carries.

    `committed` is a complete checkpoint of this run that Ray had not registered yet (COMMITTED); it is
    loaded when it is newer. With no checkpoint at all, `start_from` (a folder holding another run's
    checkpoint: under `hone tune` with PBT, a copy of the trial this one clones) is loaded instead, and
    this run's optimizer settings replace the ones saved in it."""
    import ray.train

    if committed:
        registered = -1
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                registered = saved_step(Path(folder))
        if saved_step(Path(committed)) > registered:
            checkpoint = ray.train.Checkpoint.from_directory(committed)
    if checkpoint is None and start_from:
        step = load_checkpoint(engine, ray.train.Checkpoint.from_directory(start_from), rank).step
        apply_optim_settings(engine, cfg)
        return Restored(step, [])  # the donor's metrics: `hone tune` copies its metrics.jsonl itself
    if checkpoint is None:
        return Restored(0, [])
    import torch

    with checkpoint.as_directory() as folder:
        path = Path(folder)
        step, records = saved_step(path), saved_records(path)
        engine.load_checkpoint(str(path), tag=TAG)
        rng = path / f"rng_rank{rank}.pt"
        if rng.exists():
            torch.set_rng_state(torch.load(rng, weights_only=True))  # plain tensors: never unpickle code
    print(f"hone: rank {rank} resumed from step {step} ({path.name})", flush=True)
    return Restored(step, records)


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
