"""`hone run CONFIG.yaml` for pretrain, sft, dpo or reward: a Ray Train worker group running DeepSpeed.

    hone run examples/quickstart/sft.yaml [key=value ...] [--address ray://HEAD:10001]

Reads top to bottom: validate and tokenize (no Ray yet; with --address after joining, so a large corpus is
tokenized on the cluster) -> claim the run dir -> start/join Ray ->
check the workers fit -> (dpo: the reference's log-probs, once) -> evaluate the base model -> train
(resumes automatically) -> evaluate the export -> summary.json and the before/after table.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from hone.cluster.connect import check_placement, ray_session, worker_bundle, worker_task
from hone.cluster.hooks import NO_HOOKS, RunHooks
from hone.cluster.progress import MetricsFile, RunLog, follow
from hone.cluster.rundir import (
    checkpoint_location,
    claim,
    finish_run,
    finished_run,
    inspect,
    local_checkpoints,
    newest_committed,
    remove_orphan_checkpoints,
)
from hone.cluster.stop import STOP, interrupted
from hone.cluster.tracking import Tracker
from hone.training.config import HoneConfig
from hone.training.errors import HoneError
from hone.training.files import read_json, write_json
from hone.training.handoff import by_reference
from hone.training.prepare import Prepared, attach_reference, prepare
from hone.training.token_cache import TokenTable


def run_train(cfg: HoneConfig, address: str | None = None, hooks: RunHooks = NO_HOOKS) -> dict[str, Any]:
    # Data is read, checked and tokenized before a local cluster starts. A cluster named by address is
    # joined first (joining takes no resources), so its CPUs tokenize a large text corpus (prepare.py).
    prepared = None if address else prepare(cfg)
    run_dir, state = inspect(cfg)  # refuses a dir holding another run before Ray starts
    if state == "finished":
        return finished_run(run_dir)
    started = time.time()
    with ray_session(address):
        prepared = prepared or prepare(cfg)
        check_placement(cfg.scaling)
        # Only now, with the workers known to fit, is the run dir written (or replaced).
        run_dir, state = claim(cfg)
        folder = local_checkpoints(*checkpoint_location(cfg, run_dir))
        if state == "resume" and folder is not None:  # in object storage orphans are left; Ray Train ignores them
            remove_orphan_checkpoints(run_dir, folder)
        shutil.rmtree(run_dir / ".staging", ignore_errors=True)  # shards a killed run was still staging
        what = "resuming" if state == "resume" else "new"
        print(f"hone: {cfg.mode} run in {run_dir} ({what}), {prepared.total_steps} steps of global batch {prepared.global_batch}")
        tracker = Tracker(cfg, run_dir)
        if cfg.mode == "dpo":
            _reference(cfg, prepared, run_dir)
        before = _eval_before(cfg, prepared, run_dir)
        workers, metrics = _train(cfg, prepared, run_dir, tracker, hooks, folder)
        after = _evaluate(cfg, prepared, str(run_dir / "model"), run_dir)
    summary = _summary(cfg, prepared, run_dir, before, after, workers, metrics, time.time() - started)
    finish_run(run_dir, summary)
    tracker.finish(summary)
    return summary


def _evaluate(cfg: HoneConfig, prepared: Prepared, model_dir: str, run_dir: Path) -> dict[str, float]:
    """The same evaluation for base and tuned model. Under ZeRO-3, on a worker group like training's with
    the model loaded partitioned, so any model that trains can be evaluated; otherwise (every worker held
    the whole model anyway) as one Ray task with one worker's resources, which starts faster."""
    import ray

    from hone.training.evaluate import evaluate_model, model_scores

    examples = _shippable(cfg, prepared.eval_examples)
    if cfg.deepspeed.zero_stage == 3:
        which = "base" if model_dir == prepared.resolved_model else "tuned"
        args = {"cfg": cfg, "kind": prepared.kind, "examples": examples, "rows": prepared.eval_rows, "fmt": prepared.fmt}
        return sharded_job(cfg, model_dir, prepared.kind, model_scores, args, run_dir, f"evaluated the {which} model")
    task = worker_task(evaluate_model, cfg.scaling)
    return ray.get(task.remote(cfg, model_dir, prepared.kind, examples, prepared.eval_rows, prepared.fmt))


def sharded_job(cfg: HoneConfig, model_dir: str, kind: str, job: Any, args: dict[str, Any], run_dir: Path, what: str) -> Any:
    """`job(model, tokenizer, shard=..., **args)` on a worker group of scaling.num_workers with the model in
    `model_dir` loaded partitioned (training/evaluate.py:on_sharded_model); rank 0's result."""
    import ray
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hone.training.evaluate import on_sharded_model

    log = RunLog.remote()  # type: ignore[attr-defined]
    scratch = run_dir / ".sharded"  # Ray Train's state for this worker group (nothing is checkpointed)
    started = time.time()
    trainer = TorchTrainer(
        on_sharded_model,
        train_loop_config=by_reference({"job": job, "model_dir": model_dir, "kind": kind, "args": args, "log": log}),
        torch_config=TorchConfig(timeout_s=int(cfg.scaling.collective_timeout_s)),
        scaling_config=_worker_group(cfg),
        run_config=RunConfig(
            storage_path=str(scratch), name=job.__name__, failure_config=FailureConfig(max_failures=cfg.scaling.max_failures)
        ),
    )
    try:
        _fit_until_done(trainer, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ranks = ray.get(log.worker_info.remote())
    split = min(r["num_params_local_empty"] for r in ranks)
    print(
        f"hone: {what} on {len(ranks)} worker(s) in {time.time() - started:.0f} s, "
        f"{split} of {ranks[0]['num_params']} parameters partitioned"
    )
    return ranks[0]["result"]


def _worker_group(cfg: HoneConfig) -> Any:
    from ray.train import ScalingConfig

    s = cfg.scaling
    return ScalingConfig(
        num_workers=s.num_workers,
        use_gpu=s.use_gpu,
        resources_per_worker=worker_bundle(s),
        placement_strategy=s.placement_strategy,
    )


def _shippable(cfg: HoneConfig, examples: TokenTable) -> Any:
    """The examples as the workers get them: the token cache's path, each worker mapping the file, when
    every node sees it (one node, or data.cache_dir set to shared storage); else by value through the
    object store, which Ray maps into each node's workers without a copy per worker."""
    import ray

    if examples.path is not None and (
        cfg.data.cache_dir or len({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}) == 1
    ):
        return examples
    return ray.put(examples.detached())


def _reference(cfg: HoneConfig, prepared: Prepared, run_dir: Path) -> None:
    """DPO's frozen reference: the base model's log-probs of every train and eval pair, computed once as a
    Ray task and cached in the run dir (a resumed run reuses them). Precomputing works under every ZeRO
    stage and keeps a second model out of the training workers, at the cost of one no-grad pass."""
    import ray

    from hone.training.evaluate import pair_logps, reference_logps

    path = run_dir / "reference_logps.json"
    if path.exists():
        logps = read_json(path)
    else:
        print("hone: computing the reference model's log-probs of every pair (once per run) ...", flush=True)
        train, held_out = (_shippable(cfg, x) for x in (prepared.train_examples, prepared.eval_examples))
        if cfg.deepspeed.zero_stage == 3:  # sharded like the policy, so any model that trains has a reference
            args = {"cfg": cfg, "train": train, "held_out": held_out}
            logps = sharded_job(cfg, prepared.resolved_model, "causal", pair_logps, args, run_dir, "computed them")
        else:
            logps = ray.get(worker_task(reference_logps, cfg.scaling).remote(cfg, prepared.resolved_model, train, held_out))
        write_json(path, logps)
    attach_reference(prepared, logps)


def _eval_before(cfg: HoneConfig, prepared: Prepared, run_dir: Path) -> dict[str, float]:
    # Cached so a resumed run does not pay for the base model's evaluation twice.
    path = run_dir / "eval_before.json"
    if path.exists():
        return read_json(path)
    print("hone: evaluating the base model ...", flush=True)
    before = _evaluate(cfg, prepared, prepared.resolved_model, run_dir)
    write_json(path, before)
    return before


def _train(
    cfg: HoneConfig, prepared: Prepared, run_dir: Path, tracker: Tracker, hooks: RunHooks, stored_in: Path | None
) -> tuple[list[dict[str, Any]], MetricsFile]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hone.training.loop import TrainPlan, train_worker

    log = RunLog.remote()  # type: ignore[attr-defined]
    plan = TrainPlan(
        config=cfg,
        resolved_model=prepared.resolved_model,
        kind=prepared.kind,
        train_examples=_shippable(cfg, prepared.train_examples),
        eval_examples=_shippable(cfg, prepared.eval_examples),
        logger=log,
        run_dir=str(run_dir),
        total_steps=prepared.total_steps,
        steps_per_epoch=prepared.steps_per_epoch,
        start_from=hooks.start_from,
        stored_in=str(stored_in) if stored_in else None,
        committed=newest_committed(stored_in),
    )
    storage, name = checkpoint_location(cfg, run_dir)
    s = cfg.scaling
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=by_reference({"plan": plan}),
        torch_config=TorchConfig(timeout_s=int(s.collective_timeout_s)),
        scaling_config=_worker_group(cfg),
        run_config=RunConfig(
            # run_dir/checkpoints, or this run's own folder under scaling.storage_path (shared storage)
            storage_path=storage,
            name=name,
            # Ray's defaults retry a worker group that can no longer be placed (a node gone, no autoscaler)
            # and preemptions forever; both are bounded, so such a run ends with an error instead.
            # (mypy reads ray.train's V1 FailureConfig; under Train V2, Ray 2.60's default, it is V2's)
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=s.max_failures,
                controller_failure_limit=s.max_failures + 1,
                max_preemption_failures=MAX_PREEMPTIONS,
            ),
            callbacks=list(hooks.train_callbacks),  # in a `hone tune` trial: live metrics for the scheduler
            checkpoint_config=CheckpointConfig(num_to_keep=None if hooks.keep_all_checkpoints else cfg.checkpoint.keep),
        ),
    )
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    done = threading.Event()
    log_errors: list[BaseException] = []
    follower = threading.Thread(
        target=follow, args=(log, metrics, prepared.total_steps, done, tracker.log, log_errors), daemon=True
    )
    follower.start()
    try:
        _fit_until_done(trainer, log)
    finally:
        done.set()
        follower.join()
    if log_errors:
        err = log_errors[0]
        raise RunLogError(
            f"writing metrics.jsonl / W&B failed ({type(err).__name__}: {err}); training stopped at its next step "
            "with a checkpoint. Fix the cause (a full disk?) and rerun the same command to resume"
        ) from err
    if STOP.is_set():
        raise interrupted(metrics.lines[-1]["step"] if metrics.lines else 0)
    return ray.get(log.worker_info.remote()), metrics


MAX_PREEMPTIONS = 20  # node reclaims a run survives (each resumes from its preemption checkpoint)


class RunLogError(HoneError, RuntimeError):
    """The run's metrics could not be written."""


def _fit_until_done(trainer: Any, log: Any) -> None:
    """trainer.fit() in a thread of its own: in the main thread Ray Train would put in its own Ctrl-C
    handler (abort, no checkpoint) in place of hone's (checkpoint at the next step, then stop). A stop
    request reaches the workers through the run log."""
    outcome: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # re-raised in the driver's thread
            outcome.append(err)

    fitter = threading.Thread(target=fit, name="hone-fit", daemon=True)
    fitter.start()
    asked = False
    while fitter.is_alive():
        fitter.join(0.5)
        if STOP.is_set() and not asked:
            log.request_stop.remote()
            asked = True
    if outcome:
        _raise_clearly(outcome[0])


class WorkersLostError(HoneError, RuntimeError):
    """The worker group could not be placed again after a failure."""


def _raise_clearly(err: BaseException) -> None:
    """A worker group that can no longer be placed (a node gone for good, no autoscaler) ends Ray Train
    with a ControllerError wrapping its startup timeout: said in one line, with what to do."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    failure = getattr(err, "controller_failure", None)
    if isinstance(failure, WorkerGroupStartupTimeoutError):
        waited = str(failure).split(". Potential causes")[0]  # Ray's own advice is about autoscaling
        raise WorkersLostError(
            f"the training workers could not be placed again after a failure ({waited}). The cluster may "
            "have lost a node for good (`ray status` shows what is left); when it has room again, rerun the same "
            "command to resume from the last checkpoint"
        ) from err
    raise err


def _summary(
    cfg: HoneConfig,
    prepared: Prepared,
    run_dir: Path,
    before: dict[str, float],
    after: dict[str, float],
    workers: list[dict[str, Any]],
    metrics: MetricsFile,
    seconds: float,
) -> dict[str, Any]:
    steps = [r for r in metrics.lines if "step_seconds" in r]
    train_seconds = sum(r["step_seconds"] for r in steps)
    return {
        "mode": cfg.mode,
        "objective": prepared.kind,
        "steps": prepared.total_steps,
        "global_batch": prepared.global_batch,
        "tokens_per_s": sum(r["tokens"] for r in steps) / train_seconds if train_seconds else 0.0,
        "real_tokens_per_s": sum(r["real_tokens"] for r in steps) / train_seconds if train_seconds else 0.0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "wall_seconds": seconds,
        "model_path": str(run_dir / "model"),
        "eval": {"before": before, "after": after},
        "workers": workers,
        "data": prepared.summary(),
    }
