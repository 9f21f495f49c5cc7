"""`hone run CONFIG.yaml`: the config's mode picks its entry point.

    hone run examples/quickstart/sft.yaml [key=value ...] [--address ray://HEAD:10001]

pretrain, sft, dpo and reward train on a Ray Train worker group (cluster/train_run.py); rl runs the
actor-based loop (cluster/rl_run.py); synth turns documents into training data (cluster/synth_run.py).
Each reads top to bottom from there.
"""

from __future__ import annotations

from typing import Any

from hone.cluster.hooks import NO_HOOKS, RunHooks
from hone.cluster.rundir import run_dir_lock
from hone.training.config import HoneConfig


def run(cfg: HoneConfig, address: str | None = None, hooks: RunHooks = NO_HOOKS) -> dict[str, Any]:
    """Train the config's mode; returns the run's summary (what summary.json holds). The run dir is
    locked throughout: a `hone run`, a `hone tune` trial and a pipeline stage all come through here."""
    with run_dir_lock(cfg.output_dir):
        if cfg.mode == "rl":
            from hone.cluster.rl_run import run_rl

            return run_rl(cfg, address, hooks)
        if cfg.mode == "synth":
            from hone.cluster.synth_run import run_synth

            return run_synth(cfg, address, hooks)
        from hone.cluster.train_run import run_train

        return run_train(cfg, address, hooks)


def prepare_any(cfg: HoneConfig) -> Any:
    """Check the config's model and data the way its run will, with no Ray: `Prepared` (tokenized data and
    step arithmetic) for the Train modes, `PreparedRl` (prompts and imported rewards) for rl."""
    if cfg.mode == "rl":
        from hone.rl.prepare import prepare_rl

        return prepare_rl(cfg)
    if cfg.mode == "synth":
        from hone.cluster.synth_run import prepare_synth

        return prepare_synth(cfg)
    from hone.training.prepare import prepare

    return prepare(cfg)
