"""`hone run rl.yaml`: reinforcement learning from rewards on Ray actor groups.

    hone run examples/rl/rl.yaml [key=value ...] [--address ray://HEAD:10001]

Reads top to bottom: check config, prompts and rewards (no Ray yet) -> start/join Ray -> reserve every
role's placement -> claim the run dir -> the controller (rl/controller.py) evaluates the base policy,
trains (resuming from the last checkpoint) and evaluates the result -> summary.json and the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hone.cluster.connect import ray_session
from hone.cluster.hooks import NO_HOOKS, RunHooks
from hone.cluster.progress import MetricsFile
from hone.cluster.rundir import claim, finish_run, finished_run, inspect
from hone.cluster.stop import interrupted, stop_requested
from hone.cluster.tracking import Tracker
from hone.rl.controller import Controller, reserve_roles
from hone.rl.prepare import prepare_rl
from hone.training.config import HoneConfig
from hone.training.files import read_json, write_json


def run_rl(cfg: HoneConfig, address: str | None = None, hooks: RunHooks = NO_HOOKS) -> dict[str, Any]:
    prepared = prepare_rl(cfg)
    run_dir, state = inspect(cfg)
    if state == "finished":
        return finished_run(run_dir)
    started = time.time()
    with ray_session(address):
        roles = reserve_roles(cfg)  # an impossible placement fails here, before the run dir is touched
        try:
            run_dir, state = claim(cfg)
            what = "resuming" if state == "resume" else "new"
            print(
                f"hone: rl run in {run_dir} ({what}), {prepared.total_steps} steps of {cfg.rl.prompts_per_step} prompts "
                f"x {cfg.rl.group_size} samples",
                flush=True,
            )
            tracker = Tracker(cfg, run_dir)
            with _Progress(run_dir, prepared.total_steps, tracker, hooks.on_rl_step) as progress:
                controller = Controller(cfg, prepared, run_dir, roles, progress.record, stop_requested)
                controller.start()
                result = controller.run(_eval_before(run_dir, controller, len(prepared.eval_prompts)))
        finally:
            roles.stop()
    if "stopped_at" in result:
        raise interrupted(result["stopped_at"])
    summary = _summary(cfg, prepared.summary(), run_dir, result, progress.metrics, time.time() - started)
    finish_run(run_dir, summary)
    tracker.finish(summary)
    return summary


def _eval_before(run_dir: Path, controller: Controller, num_prompts: int) -> dict[str, float]:
    # Cached so a resumed run does not pay for the base policy's evaluation twice.
    path = run_dir / "eval_before.json"
    before = read_json(path)
    if before is None:
        print(f"hone: evaluating the base policy on {num_prompts} held-out prompts ...", flush=True)
        before = controller.evaluate()
        write_json(path, before)
    print(f"hone: base policy mean reward {before['mean_reward']:.4f} on held-out prompts", flush=True)
    return before


class _Progress:
    """metrics.jsonl, W&B and a tqdm bar, fed one record per step by the controller."""

    def __init__(
        self, run_dir: Path, total_steps: int, tracker: Tracker, on_step: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self.run_dir, self.total, self.tracker, self.on_step = run_dir, total_steps, tracker, on_step
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")

    def __enter__(self) -> _Progress:
        from tqdm import tqdm

        start = self.metrics.lines[-1]["step"] if self.metrics.lines else 0
        self.bar = tqdm(total=self.total, initial=start, desc="rl", unit="step", dynamic_ncols=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def record(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        self.metrics.add(record)
        self.tracker.log(record)
        if self.on_step:
            self.on_step(record)
        self.bar.n = record["step"]
        self.bar.set_postfix(
            reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}", samples_s=f"{record['samples_per_s']:.1f}"
        )
        self.bar.refresh()


def _summary(
    cfg: HoneConfig, data: dict[str, Any], run_dir: Path, result: dict[str, Any], metrics: MetricsFile, seconds: float
) -> dict[str, Any]:
    steps = [r for r in metrics.lines if "step_seconds" in r]
    step_seconds = sum(r["step_seconds"] for r in steps)
    samples = cfg.rl.prompts_per_step * cfg.rl.group_size
    return {
        "mode": "rl",
        "steps": data["total_steps"],
        "samples_per_step": samples,
        "samples_per_s": samples * len(steps) / step_seconds if step_seconds else 0.0,
        "final_reward_mean": steps[-1]["reward_mean"] if steps else None,
        "wall_seconds": seconds,
        "model_path": str(run_dir / "model"),
        "eval": {"before": result["before"], "after": result["after"]},
        "placement": result["placement"],
        "restarts": result["restarts"],
        "rollout_engine": result["engine"],
        "data": data,
    }
