"""`hone tune`: a 4-trial ASHA sweep over the learning rate on a tiny sft task; the two learning rates that
cannot learn are stopped early, sweep.json ranks the trials, and best.yaml runs as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone.cluster.cli import main
from hone.cluster.tune import check_tune, tune_run
from hone.training.config import ConfigError, load_config
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides
from tests.wandb_files import read_run

GRID = "tune.space={optim.lr: {type: grid, values: [3e-3, 1e-3, 1e-9, 1e-10]}}"


def _sweep_overrides(assets, out, *extra):
    return sft_overrides(
        assets, out, GRID, "tune.num_samples=1", "tune.metric=loss", "tune.mode=min", "tune.grace_period=1",
        "tune.reduction_factor=2", "train.max_steps=16", "eval.every_steps=4", "eval.max_samples=8", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_asha_stops_the_learning_rates_that_cannot_learn(assets, tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # W&B offline: files under each trial's run dir
    report = tune_run(load_config(None, _sweep_overrides(assets, tmp_path / "sweep", "tracking.wandb.project=hone-tests")))

    trials = report["trials"]
    assert len(trials) == 4
    by_lr = {float(t["overrides"]["optim.lr"]): t for t in trials}
    best = trials[0]
    assert float(best["overrides"]["optim.lr"]) in (3e-3, 1e-3) and best["steps"] == 16
    for lr in (1e-9, 1e-10):
        assert by_lr[lr]["steps"] < best["steps"] and by_lr[lr]["stopped_early"], by_lr[lr]
    metrics = [t["metric"] for t in trials]
    assert metrics == sorted(metrics)  # ranked by held-out loss, lowest first
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["trials"][0]["trial_id"] == best["trial_id"]
    assert (tmp_path / "sweep" / "best_model.txt").read_text().strip().endswith("model")

    # One W&B run per trial, all in one group named after the sweep.
    for t in trials:
        [offline] = list((Path(t["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))
        if t["stopped_early"]:
            # Killed by ASHA mid-run, maybe before W&B's own process wrote even its first record (seen in CI);
            # what it did write must be this trial's.
            logged = read_run(offline, timeout_s=2)  # a killed run never writes its exit record
            if "_group" not in logged["config"]:
                continue
        else:
            logged = read_run(offline, timeout_s=60)
            assert any("train/loss" in h for h in logged["history"])
        assert logged["config"]["_group"] == "sweep" and logged["config"]["optim"]["lr"] == pytest.approx(
            float(t["overrides"]["optim.lr"])
        )

    # best.yaml is a complete config: `hone run best.yaml` trains it again in its own dir.
    assert main(["run", str(tmp_path / "sweep" / "best.yaml")]) == 0
    assert json.loads((tmp_path / "sweep" / "best" / "summary.json").read_text())["steps"] == 16


def test_bad_sweeps_fail_before_any_trial(assets, tmp_path):
    cases = {
        "tune.space={optim.lrate: {type: loguniform, low: 1e-5, high: 1e-3}}": "is not a config field; did you mean optim.lr",
        "tune.metric=mean_reward": "tune.metric='mean_reward': mode sft never reports it; it reports loss, exact_match",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            check_tune(load_config(None, _sweep_overrides(assets, tmp_path / "s", override)))
    with pytest.raises(ConfigError, match="set eval.every_steps"):
        check_tune(load_config(None, _sweep_overrides(assets, tmp_path / "s", "eval.every_steps=0")))


@pytest.mark.slow
def test_pbt_restarts_the_weak_trial_from_a_copy_of_the_strong_one(assets, tmp_path, local_ray):
    """Two trials, one whose learning rate cannot learn: PBT replaces its model by a copy of the other's at a
    scored checkpoint, and it goes on from there with its own (perturbed) learning rate. (No neighbouring run
    here: a sweep kills nothing by pid or by the state API; tests/e2e/test_resume.py's worker kill, which
    does, runs beside one, and tests/faults/test_concurrent_runs.py runs two embedded clusters at once.)"""
    sweep = tmp_path / "pbt"
    # PBT compares trials that train at the same time. The two trials' starts can differ by a second or more,
    # and this model trains ~40 steps a second: with 20 steps one trial sometimes finished before the other
    # reported, and nothing was exploited. 300 steps keep them side by side; 5 reports bound the restarts.
    steps, every = 300, 60
    overrides = sft_overrides(
        assets, sweep, "tune.space={optim.lr: {type: grid, values: [3e-3, 1e-9]}}", "tune.num_samples=1",
        "tune.scheduler=pbt", "tune.perturbation_interval=1", "tune.quantile_fraction=0.5", "tune.max_concurrent_trials=2",
        f"train.max_steps={steps}", f"eval.every_steps={every}", f"checkpoint.every_steps={every}", "eval.max_samples=8",
        "optim.decay=constant",
    )  # fmt: skip
    report = tune_run(load_config(None, overrides))

    # The first copy always goes into the trial that cannot learn; later ones may go either way.
    [weak] = [t for t in report["trials"] if t["exploits"] and float(t["exploits"][0]["replaced_overrides"]["optim.lr"]) == 1e-9]
    [strong] = [t for t in report["trials"] if t is not weak]
    first, last = weak["exploits"][0], weak["exploits"][-1]
    assert first["from_trial"] == strong["trial_id"] and first["at_step"] % every == 0
    assert first["donor_loss"] < first["replaced_loss"] - 0.3  # it was the weaker one when it was replaced

    lines = read_jsonl(Path(weak["run_dir"]) / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, steps + 1))  # the donor's steps up to the copy, then its own, once each
    after = [r for r in lines if r["step"] > last["at_step"]]
    # It continued from the copied weights (held-out loss far below what it had itself, to the end) ...
    assert all(r["eval_loss"] < first["replaced_loss"] - 0.3 for r in after if "eval_loss" in r)
    assert weak["metric"] < first["replaced_loss"] - 0.3
    # ... with the learning rate PBT chose for it, not the one saved in the copied optimizer.
    assert after[0]["lr"] == pytest.approx(float(last["overrides"]["optim.lr"]))
    assert float(last["overrides"]["optim.lr"]) == pytest.approx(float(weak["overrides"]["optim.lr"]))
    assert weak["steps"] == strong["steps"] == steps
    # Once the sweep is over, each trial keeps at most its newest checkpoint.keep checkpoints, like any run
    # (during it, every scored one was kept for PBT to clone), and the copies trials started from are gone.
    for t in report["trials"]:
        assert 1 <= len(list((Path(t["run_dir"]) / "checkpoints").glob("step_*"))) <= 2
        assert not (Path(t["run_dir"]) / "pbt_start").exists()


def _counting_trial(config: dict) -> None:
    """A trial that records each of its starts and whose checkpoint it started from, then reports its
    score (lr x step) 40 times, 0.1 s apart, with a checkpoint each time."""
    import tempfile
    import time

    from ray import tune

    me = tune.get_context().get_trial_id()
    start = tune.get_checkpoint()
    state = json.loads((Path(start.path) / "state.json").read_text()) if start else {"step": 0, "trial": me}
    with (Path(config["starts"]) / me).open("a") as log:
        log.write(("fresh" if not start else "own" if state["trial"] == me else "copy") + "\n")
    for step in range(state["step"] + 1, 41):
        time.sleep(0.1)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"step": step, "trial": me}))
            tune.report({"score": config["lr"] * step}, checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_pbt_never_pauses_a_trial_that_has_its_own_slot(tmp_path, local_ray):
    """Ray's PBT pauses (stops, later restarts) a trial that reports while another restarts; for a hone
    trial that is a run's whole start-up again. With a slot per trial, only replaced trials restart."""
    from ray import tune

    from hone.cluster.pbt import OwnSlotsPBT

    starts = tmp_path / "starts"
    starts.mkdir()
    scheduler = OwnSlotsPBT(
        all_have_slots=True, time_attr="training_iteration", perturbation_interval=1, quantile_fraction=0.5,
        hyperparam_mutations={"lr": [1.0, 0.0]},
    )  # fmt: skip
    tune.Tuner(
        _counting_trial,
        param_space={"lr": tune.grid_search([1.0, 0.0]), "starts": str(starts)},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    kinds = [line for log in starts.iterdir() for line in log.read_text().split()]
    assert kinds.count("fresh") == 2 and "copy" in kinds  # both started, and PBT replaced a trial
    assert "own" not in kinds  # no trial was paused and resumed from its own checkpoint


def test_pbt_refuses_settings_a_copied_checkpoint_cannot_take(assets, tmp_path):
    cases = {
        "tune.space={lora.rank: {type: choice, values: [4, 8]}}": "tune.space key 'lora.rank' cannot be tuned with tune.scheduler=pbt",
        "checkpoint.every_steps=8": r"set checkpoint.every_steps \(now 8\) equal to eval.every_steps \(4\)",
        "mode=rl|rl.rewards=[{type: exact_match, field: answer}]|tune.metric=mean_reward|tune.mode=max": "for rl use tune.scheduler=asha",
    }
    for override, message in cases.items():
        args = _sweep_overrides(assets, tmp_path / "s", "tune.scheduler=pbt", "checkpoint.every_steps=4", *override.split("|"))
        with pytest.raises(ConfigError, match=message):
            check_tune(load_config(None, args))
