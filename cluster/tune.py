"""`hone tune CONFIG.yaml`: a Ray Tune sweep where every trial is a whole hone run of any mode.

    hone tune examples/tune/sft_lr.yaml [key=value ...]

Reads top to bottom: check the config, the search space and the metric (no Ray yet) -> start/join Ray ->
Tuner over a trial function that runs `hone run` for one sampled config (the Ray Train V2 pattern: the
trial builds and fits its own TorchTrainer, whose reports reach Tune through a Train callback) -> ASHA
stops weak trials early -> sweep.json (trials ranked), best.yaml (runnable as is), best_model.

An interrupted sweep resumes when the same command runs again: finished trials are kept, unfinished
ones continue (each trial's run dir resumes from its own checkpoints).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from cluster.connect import ray_session
from training.config import ConfigError, HoneConfig, apply_override, config_fields, from_dict, to_dict

# The eval metrics each mode reports (summary.json eval.after); those marked live are also reported
# while training, which is what lets ASHA compare trials before they finish.
METRICS = {
    "pretrain": {"loss": True, "perplexity": False},
    "sft": {"loss": True, "exact_match": False, "contains": False},
    "dpo": {"loss": True, "reward_accuracy": False, "reward_margin": False},
    "reward": {"loss": True, "accuracy": False, "margin": False},
    "rl": {"mean_reward": True, "response_length": False},
}
LIVE_KEY = {"loss": "eval_loss", "mean_reward": "reward_mean"}  # the per-step metrics.jsonl key behind each


def check_tune(cfg: HoneConfig) -> None:
    """Space keys are config fields, the metric is one the mode reports, ASHA has something to compare."""
    t = cfg.tune
    if not t.space:
        raise ConfigError(
            "tune.space is empty: add at least one dimension, e.g. {optim.lr: {type: loguniform, low: 1e-5, high: 1e-3}}"
        )
    fields = config_fields(HoneConfig)
    for key, dim in t.space.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            raise ConfigError(f"tune.space key {key!r} is not a config field" + (f"; did you mean {near[0]}?" if near else ""))
        if key.startswith(("tune.", "output_dir", "mode")):
            raise ConfigError(f"tune.space key {key!r} cannot be tuned: it defines the sweep itself")
        if dim.type in ("choice", "grid") and not dim.values:
            raise ConfigError(f"tune.space.{key}: type {dim.type} needs values: [...]")
        if dim.type in ("loguniform", "uniform", "randint") and not dim.low < dim.high:
            raise ConfigError(f"tune.space.{key}: low ({dim.low}) must be below high ({dim.high})")
        if dim.type == "loguniform" and dim.low <= 0:
            raise ConfigError(f"tune.space.{key}: loguniform needs low > 0, got {dim.low}")
    metrics = METRICS[cfg.mode] | (
        {f"reward/{_reward_names(cfg)[i]}": True for i in range(len(cfg.rl.rewards))} if cfg.mode == "rl" else {}
    )
    if t.metric not in metrics:
        raise ConfigError(f"tune.metric={t.metric!r}: mode {cfg.mode} never reports it; it reports {', '.join(metrics)}")
    if t.scheduler == "asha" and cfg.mode != "rl" and cfg.eval.every_steps == 0:
        raise ConfigError(
            "tune.scheduler=asha compares trials while they train, from the held-out loss every eval.every_steps; "
            "set eval.every_steps (e.g. 5), or tune.scheduler=none"
        )
    for key in ("num_samples", "grace_period", "reduction_factor", "max_concurrent_trials"):
        if getattr(t, key) < 1:
            raise ConfigError(f"tune.{key}={getattr(t, key)} must be 1 or more")


def _reward_names(cfg: HoneConfig) -> list[str]:
    from rl.rewards import reward_name

    return [reward_name(s) for s in cfg.rl.rewards]


def search_space(cfg: HoneConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in cfg.tune.space.items():
        values = [_number(v) for v in dim.values]
        space[key] = {
            "loguniform": lambda d=dim: tune.loguniform(d.low, d.high),
            "uniform": lambda d=dim: tune.uniform(d.low, d.high),
            "randint": lambda d=dim: tune.randint(int(d.low), int(d.high)),
            "choice": lambda v=values: tune.choice(v),
            "grid": lambda v=values: tune.grid_search(v),
        }[dim.type]()
    return space


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-5 as a string; a search value that looks like a number is one.
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def in_trial() -> bool:
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return _in_tune_session()


def train_callbacks() -> list[Any]:
    """Inside a trial: pass the workers' reports on to Tune, with the held-out loss under the metric's
    name (`loss`) and the training loss renamed, so ASHA compares trials on held-out loss."""
    if not in_trial():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    class LiveMetrics(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = {("train_loss" if k == "loss" else k): v for k, v in metrics[0].items()}
            if "eval_loss" not in first:
                return  # a checkpoint-only report: Tune wants the metric in every result it gets
            first["loss"] = first["eval_loss"]
            super().after_report(run_context, [first], None)

    return [LiveMetrics()]


def report_rl_step(record: dict[str, Any]) -> None:
    """Inside a trial: each RL step's mean reward (and reward parts) for ASHA."""
    if in_trial():
        from ray import tune

        tune.report(
            {"mean_reward": record["reward_mean"], "step": record["step"]}
            | {k: v for k, v in record.items() if k.startswith("reward/")}
        )


# ----------------------------------------------------------------------------------------------------
# The sweep


def tune_run(cfg: HoneConfig, address: str | None = None) -> dict[str, Any]:
    check_tune(cfg)
    _check_base_run(cfg)
    sweep = Path(cfg.output_dir).expanduser().resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    with ray_session(address):
        results = _fit(cfg, sweep)
        report = _write_sweep(cfg, sweep, results)
    print(format_sweep(report))
    return report


def _check_base_run(cfg: HoneConfig) -> None:
    """Validate data and model once, with the base config, before any trial starts."""
    if cfg.mode == "rl":
        from rl.prepare import prepare_rl

        prepare_rl(cfg)
    else:
        from training.prepare import prepare

        prepare(cfg)


def _fit(cfg: HoneConfig, sweep: Path) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    trainable = tune.with_parameters(trial, base=to_dict(cfg), sweep=str(sweep))
    # The trial itself only drives a run whose workers reserve their own CPUs and GPUs; Tune needs it to
    # ask for something, so it asks for a sliver that leaves the workers' whole CPUs free.
    trainable = tune.with_resources(trainable, {"CPU": 0.001})
    tune_dir = sweep / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        print(f"hone: resuming the sweep in {sweep}", flush=True)
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration", grace_period=t.grace_period, reduction_factor=t.reduction_factor, max_t=10**6
            )
            if t.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=t.metric,
                mode=t.mode,
                scheduler=scheduler,
                num_samples=t.num_samples,
                max_concurrent_trials=t.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep), verbose=1),
        )
    return tuner.fit()


def trial(params: dict[str, Any], base: dict[str, Any], sweep: str) -> None:
    """One trial: the base config with the sampled values, run as an ordinary hone run in its own dir."""
    from ray import tune

    from cluster.run import run

    raw = copy.deepcopy(base)
    raw["tune"] = {}
    raw["output_dir"] = str(Path(sweep) / "trials" / tune.get_context().get_trial_id())
    if raw["tracking"]["wandb"]["project"] and not raw["tracking"]["wandb"]["group"]:
        raw["tracking"]["wandb"]["group"] = Path(sweep).name  # a sweep is one W&B group, a run per trial
    for key, value in params.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    summary = run(from_dict(raw))
    metric = base["tune"]["metric"]
    tune.report({metric: summary["eval"]["after"][metric], "final": 1, "steps": summary["steps"]})


def _write_sweep(cfg: HoneConfig, sweep: Path, results: Any) -> dict[str, Any]:
    t = cfg.tune
    trials = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        run_dir = sweep / "trials" / trial_id if trial_id else None
        trials.append(_trial_row(cfg, result.config or {}, run_dir, result))
    finite = [r for r in trials if isinstance(r["metric"], float) and math.isfinite(r["metric"])]
    ranked = sorted(finite, key=lambda r: r["metric"], reverse=t.mode == "max") + [r for r in trials if r not in finite]
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    report: dict[str, Any] = {"metric": t.metric, "mode": t.mode, "scheduler": t.scheduler, "trials": ranked, "best": None}
    if finite:
        report["best"] = _write_best(cfg, sweep, ranked[0])
    (sweep / "sweep.json").write_text(json.dumps(report, indent=2))
    return report


def _trial_row(cfg: HoneConfig, params: dict[str, Any], run_dir: Path | None, result: Any) -> dict[str, Any]:
    metrics_file = run_dir / "metrics.jsonl" if run_dir else None
    steps = 0
    if metrics_file and metrics_file.exists():
        lines = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        steps = max((r["step"] for r in lines), default=0)
    finished = bool(run_dir and (run_dir / "summary.json").exists())
    last = result.metrics or {}
    value = last.get(cfg.tune.metric, last.get(LIVE_KEY.get(cfg.tune.metric, ""), float("nan")))
    return {
        "trial_id": run_dir.name if run_dir else "?",
        "run_dir": str(run_dir) if run_dir else None,
        "overrides": params,
        "steps": steps,
        "metric": float(value) if value is not None else float("nan"),
        "stopped_early": not finished and result.error is None,
        "status": "ERROR" if result.error is not None else ("TERMINATED" if finished else "STOPPED"),
    }


def _write_best(cfg: HoneConfig, sweep: Path, best: dict[str, Any]) -> dict[str, Any]:
    raw = to_dict(cfg)
    raw["tune"] = to_dict(HoneConfig())["tune"]
    raw["output_dir"] = str(sweep / "best")
    for key, value in best["overrides"].items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    (sweep / "best.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    model = Path(best["run_dir"]) / "model"
    (sweep / "best_model.txt").write_text(str(model) + "\n")
    return {
        "trial_id": best["trial_id"],
        "run_dir": best["run_dir"],
        "config_path": str(sweep / "best.yaml"),
        "model_path": str(model),
    }


def format_sweep(report: dict[str, Any]) -> str:
    lines = [f"\nsweep: {len(report['trials'])} trials ranked by {report['metric']} ({report['mode']})"]
    for row in report["trials"]:
        flag = " (stopped early)" if row["stopped_early"] else ""
        lines.append(
            f"  {row['rank']:>2}. {row['trial_id']:<28} {row['metric']:.4f}  steps {row['steps']:<5} {row['overrides']}{flag}"
        )
    if report["best"]:
        lines.append(f"best config: {report['best']['config_path']}\nbest model:  {report['best']['model_path']}")
    return "\n".join(lines)
