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
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from hone.cluster.connect import ray_session
from hone.cluster.hooks import RunHooks
from hone.cluster.run import prepare_any, run
from hone.cluster.rundir import claim, run_dir_lock
from hone.training.config import ConfigError, HoneConfig, apply_override, config_fields, from_dict, to_dict
from hone.training.files import read_json, read_jsonl, write_json, write_text

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
# PBT: the Tune checkpoint's one file (a pointer to a run's Ray Train checkpoint), the folder in a trial's
# run dir holding the copy it was cloned from, and that trial's record of the clones it went through.
POINTER, START_DIR, CLONE_RECORD, EXPLOITS = "pointer.json", "pbt_start", "clone.json", "exploits.jsonl"
# Settings a PBT trial may change when it restarts from another trial's checkpoint: none of them changes
# the model's shape, the data or the step count.
PBT_KEYS = ("optim.", "dpo.")


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
    if t.scheduler != "none" and cfg.mode != "rl" and cfg.eval.every_steps == 0:
        raise ConfigError(
            f"tune.scheduler={t.scheduler} compares trials while they train, from the held-out loss every eval.every_steps; "
            "set eval.every_steps (e.g. 5), or tune.scheduler=none"
        )
    if t.scheduler == "pbt":
        _check_pbt(cfg)
    for key in ("num_samples", "grace_period", "reduction_factor", "max_concurrent_trials"):
        if getattr(t, key) < 1:
            raise ConfigError(f"tune.{key}={getattr(t, key)} must be 1 or more")


def _check_pbt(cfg: HoneConfig) -> None:
    t = cfg.tune
    if cfg.mode == "rl":
        raise ConfigError(
            "tune.scheduler=pbt restarts trials from a copy of another trial's training checkpoint, which hone does "
            "for pretrain, sft, dpo and reward runs; for rl use tune.scheduler=asha"
        )
    for key in t.space:
        if not key.startswith(PBT_KEYS):
            raise ConfigError(
                f"tune.space key {key!r} cannot be tuned with tune.scheduler=pbt: a trial continues from another trial's "
                f"checkpoint, so only {'*, '.join(PBT_KEYS)}* settings may differ; tune {key} with tune.scheduler=asha"
            )
    if cfg.checkpoint.every_steps != cfg.eval.every_steps:
        raise ConfigError(
            f"tune.scheduler=pbt copies the checkpoint a trial had when it was scored: set checkpoint.every_steps "
            f"(now {cfg.checkpoint.every_steps}) equal to eval.every_steps ({cfg.eval.every_steps})"
        )
    if "://" in cfg.scaling.storage_path:
        raise ConfigError(
            f"tune.scheduler=pbt copies trial checkpoints on a filesystem, and scaling.storage_path={cfg.scaling.storage_path!r} "
            "is object storage; use a shared filesystem path (or leave it empty) for a PBT sweep"
        )
    if cfg.checkpoint.keep < 2:
        raise ConfigError("tune.scheduler=pbt needs checkpoint.keep >= 2, so a trial's scored checkpoint outlives its copying")
    if not 0 < t.quantile_fraction <= 0.5:
        raise ConfigError(f"tune.quantile_fraction={t.quantile_fraction} must be in (0, 0.5]")
    if t.perturbation_interval < 1:
        raise ConfigError(f"tune.perturbation_interval={t.perturbation_interval} must be 1 or more")


def _reward_names(cfg: HoneConfig) -> list[str]:
    from hone.rl.rewards import reward_name

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


def population(cfg: HoneConfig) -> int:
    """How many trials the sweep runs: every grid point, num_samples times."""
    grids = [len(dim.values) for dim in cfg.tune.space.values() if dim.type == "grid"]
    return cfg.tune.num_samples * math.prod(grids)


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-5 as a string; a search value that looks like a number is one.
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _live_metrics(reports: Any) -> Any:
    """A Ray Train callback, run in Train's controller: it sends each held-out report (rank 0's), with the
    path of the checkpoint saved with it, to the trial, which reports it to Tune. Ray's own
    TuneReportCallback forwards only the metrics, and PBT needs a checkpoint with each result to clone.
    The held-out loss goes under the metric's name (`loss`) and the training loss is renamed, so the
    schedulers compare held-out loss."""
    from ray.train.v2.api.callback import UserCallback

    class LiveMetrics(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = {("train_loss" if k == "loss" else k): v for k, v in metrics[0].items()}
            if "eval_loss" not in first:
                return  # a checkpoint-only report: Tune wants the metric in every result it gets
            first["loss"] = first["eval_loss"]
            # A queue of one: training waits for Tune to take each result, so a stop lands on time.
            reports.put({"metrics": first, "checkpoint": checkpoint.path if checkpoint else None})

    return LiveMetrics()


def _report_rl_step(record: dict[str, Any]) -> None:
    """Each RL step's mean reward (and reward parts), for ASHA; called in the trial's own thread."""
    from ray import tune

    tune.report(
        {"mean_reward": record["reward_mean"], "step": record["step"]}
        | {k: v for k, v in record.items() if k.startswith("reward/")}
    )


# ----------------------------------------------------------------------------------------------------
# The sweep


def tune_run(cfg: HoneConfig, address: str | None = None) -> dict[str, Any]:
    check_tune(cfg)
    prepare_any(cfg)  # data and model checked once, with the base config, before any trial starts
    sweep = Path(cfg.output_dir).expanduser().resolve()
    with run_dir_lock(sweep):  # one sweep at a time in a sweep dir
        # The run-dir rules, before any Ray: the same sweep resumes; another config (space, data, model)
        # is refused, or replaces the sweep under overwrite=true, instead of resuming the old space.
        claim(cfg)
        with ray_session(address):
            results = _fit(cfg, sweep)
        if cfg.tune.scheduler == "pbt":
            _prune_pbt_checkpoints(sweep, cfg.checkpoint.keep)
        report = _write_sweep(cfg, sweep, results)
    print(format_sweep(report))
    return report


def _fit(cfg: HoneConfig, sweep: Path) -> Any:
    from ray import tune

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
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=t.metric,
                mode=t.mode,
                scheduler=_scheduler(cfg),
                num_samples=t.num_samples,
                max_concurrent_trials=t.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep), verbose=1),
        )
    return tuner.fit()


def _scheduler(cfg: HoneConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from hone.cluster.pbt import OwnSlotsPBT

    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration", grace_period=t.grace_period, reduction_factor=t.reduction_factor, max_t=10**6
        )
    if t.scheduler == "pbt":
        # PBT explores a listed value by moving to a neighbour in the list, a range by scaling by 0.8 or 1.2
        # (or, a quarter of the time, by drawing afresh).
        space = search_space(cfg)
        mutations = {
            key: [_number(v) for v in dim.values] if dim.type in ("choice", "grid") else space[key]
            for key, dim in cfg.tune.space.items()
        }
        return OwnSlotsPBT(
            all_have_slots=population(cfg) <= t.max_concurrent_trials,
            time_attr="training_iteration",
            perturbation_interval=t.perturbation_interval,
            quantile_fraction=t.quantile_fraction,
            hyperparam_mutations=mutations,
        )
    return FIFOScheduler()


def trial(params: dict[str, Any], base: dict[str, Any], sweep: str) -> None:
    """One trial: the base config with the sampled values, run as an ordinary hone run in its own dir."""
    from ray import tune

    raw = copy.deepcopy(base)
    raw["tune"] = {}
    run_dir = Path(sweep) / "trials" / tune.get_context().get_trial_id()
    raw["output_dir"] = str(run_dir)
    if raw["tracking"]["wandb"]["project"] and not raw["tracking"]["wandb"]["group"]:
        raw["tracking"]["wandb"]["group"] = Path(sweep).name  # a sweep is one W&B group, a run per trial
    for key, value in params.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    cfg = from_dict(raw)
    if cfg.mode == "rl":
        summary = run(cfg, hooks=RunHooks(on_rl_step=_report_rl_step))
    else:
        pbt = base["tune"]["scheduler"] == "pbt"
        summary = _run_reporting(cfg, _start_checkpoint(cfg, run_dir, params), keep_all=pbt)
    metric = base["tune"]["metric"]
    tune.report({metric: summary["eval"]["after"][metric], "final": 1, "steps": summary["steps"]})


def _run_reporting(cfg: HoneConfig, start_from: str | None, keep_all: bool) -> dict[str, Any]:
    """Run the training in a thread while this one, Tune's, reports each held-out result it sends back,
    with a pointer to the checkpoint saved with it (what PBT clones)."""
    from ray.util.queue import Empty, Queue

    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    hooks = RunHooks(train_callbacks=(_live_metrics(reports),), keep_all_checkpoints=keep_all, start_from=start_from)
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["summary"] = run(cfg, hooks=hooks)
        except BaseException as err:  # re-raised in Tune's thread, so the trial fails with it
            outcome["error"] = err

    worker = threading.Thread(target=train, name="hone-trial-run", daemon=True)
    worker.start()
    while worker.is_alive() or not reports.empty():
        try:
            item = reports.get(timeout=1.0)
        except Empty:
            continue
        _report(item, Path(cfg.output_dir))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]


def _report(item: dict[str, Any], run_dir: Path) -> None:
    from ray import tune

    if item["checkpoint"] is None:
        tune.report(item["metrics"])
        return
    folder = Path(tempfile.mkdtemp(prefix="hone-pointer-"))
    try:
        pointer = {"run_dir": str(run_dir), "checkpoint": item["checkpoint"], "step": item["metrics"]["step"]}
        (folder / POINTER).write_text(json.dumps(pointer | {"loss": item["metrics"]["loss"]}))
        tune.report(item["metrics"], checkpoint=tune.Checkpoint.from_directory(str(folder)))  # copied on report
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# PBT: a trial restarted from another trial's checkpoint


def _start_checkpoint(cfg: HoneConfig, run_dir: Path, params: dict[str, Any]) -> str | None:
    """The checkpoint folder this trial's run starts from when it has none of its own, or None.

    PBT restarts a trial it exploits with another trial's last checkpoint and perturbed settings. Here
    that checkpoint is a pointer to the donor's Ray Train checkpoint: the trial's own run is replaced by
    a copy of it (`_clone`). A pointer to the trial's own run means an ordinary restart (a resumed
    sweep), and the run resumes from its own checkpoints."""
    from ray import tune

    start = run_dir / START_DIR
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return str(start) if start.is_dir() else None
    with checkpoint.as_directory() as folder:
        pointer = json.loads((Path(folder) / POINTER).read_text())
    clone = {"pointer": pointer, "overrides": params}
    if Path(pointer["run_dir"]) == run_dir or read_json(start / CLONE_RECORD) == clone:
        return str(start) if start.is_dir() else None  # its own run, or a clone already made
    _clone(cfg, run_dir, pointer, clone)
    return str(start)


def _clone(cfg: HoneConfig, run_dir: Path, pointer: dict[str, Any], clone: dict[str, Any]) -> None:
    """Replace this trial's run by the donor's state at its scored checkpoint: PBT's exploit step. The
    replaced run's last score and step go to exploits.jsonl; metrics.jsonl continues the donor's."""
    donor = Path(pointer["run_dir"])
    history = read_jsonl(run_dir / EXPLOITS)
    own = read_jsonl(run_dir / "metrics.jsonl")
    own_loss = next((r["eval_loss"] for r in reversed(own) if "eval_loss" in r), None)
    saved = _read_yaml(run_dir / "config.yaml")
    own_overrides = {key: _get_dotted(saved, key) for key in clone["overrides"]} if saved else {}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    claim(cfg)
    if not Path(pointer["checkpoint"]).is_dir():
        raise FileNotFoundError(
            f"pbt: the checkpoint to continue from, {pointer['checkpoint']}, is gone; was it deleted by hand?"
        )
    # Hard links: no copy on one filesystem, and a registered checkpoint's files are never rewritten.
    shutil.copytree(pointer["checkpoint"], run_dir / START_DIR, copy_function=_link_or_copy)
    write_json(run_dir / START_DIR / CLONE_RECORD, clone)
    for name in ("eval_before.json", "reference_logps.json"):  # the same base model and pairs in every trial
        if (donor / name).exists():
            shutil.copy2(donor / name, run_dir / name)
    lineage = [r for r in read_jsonl(donor / "metrics.jsonl") if r["step"] <= pointer["step"]]
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lineage))
    history.append(
        {
            "from_trial": donor.name,
            "at_step": pointer["step"],
            "donor_loss": pointer["loss"],
            "replaced_steps": max((r["step"] for r in own), default=0),
            "replaced_loss": own_loss,
            "replaced_overrides": own_overrides,
            "overrides": clone["overrides"],
        }
    )
    write_text(run_dir / EXPLOITS, "".join(json.dumps(r) + "\n" for r in history))
    print(
        f"hone: pbt: {run_dir.name} continues from {donor.name} at step {pointer['step']} with {clone['overrides']}", flush=True
    )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def _prune_pbt_checkpoints(sweep: Path, keep: int) -> None:
    """After a PBT sweep nothing can clone a checkpoint any more: keep each trial's newest `keep`, as a
    run without PBT would, and drop the copies trials started from."""
    for trial_dir in (sweep / "trials").iterdir():
        shutil.rmtree(trial_dir / START_DIR, ignore_errors=True)
        steps = sorted((trial_dir / "checkpoints").glob("step_*"))
        for old in steps[: max(0, len(steps) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


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
    write_json(sweep / "sweep.json", report, indent=2)
    return report


def _trial_row(cfg: HoneConfig, params: dict[str, Any], run_dir: Path | None, result: Any) -> dict[str, Any]:
    steps = max((r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")), default=0) if run_dir else 0
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
        "exploits": read_jsonl(run_dir / EXPLOITS) if run_dir else [],
        "status": "ERROR" if result.error is not None else ("TERMINATED" if finished else "STOPPED"),
    }


def _write_best(cfg: HoneConfig, sweep: Path, best: dict[str, Any]) -> dict[str, Any]:
    raw = to_dict(cfg)
    raw["tune"] = to_dict(HoneConfig())["tune"]
    raw["output_dir"] = str(sweep / "best")
    for key, value in best["overrides"].items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    write_text(sweep / "best.yaml", yaml.safe_dump(raw, sort_keys=False))
    model = Path(best["run_dir"]) / "model"
    write_text(sweep / "best_model.txt", str(model) + "\n")
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
