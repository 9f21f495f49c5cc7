"""What a caller above a run hands down to it: today only a `hone tune` trial does.

A plain `hone run` uses the defaults. Keeping these in a leaf module lets tune.py depend on the run
modules without the run modules knowing about Tune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunHooks:
    # Ray Train callbacks for the run's TorchTrainer (a trial's live held-out metrics for its scheduler).
    train_callbacks: tuple[Any, ...] = ()
    # PBT may clone any checkpoint a trial was scored at, so none is deleted until the sweep ends.
    keep_all_checkpoints: bool = False
    # A checkpoint folder to start from when the run has none of its own (PBT's copy of another trial's).
    start_from: str | None = None
    # Called with each RL step's record (a trial reports the mean reward to Tune).
    on_rl_step: Callable[[dict[str, Any]], None] | None = None


NO_HOOKS = RunHooks()  # a plain run
