"""`hone tune`: a 4-trial ASHA sweep over the learning rate on a tiny sft task; the two learning rates that
cannot learn are stopped early, sweep.json ranks the trials, and best.yaml runs as it is."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main
from cluster.tune import check_tune, tune_run
from tests.conftest import sft_overrides
from training.config import ConfigError, load_config

GRID = "tune.space={optim.lr: {type: grid, values: [3e-3, 1e-3, 1e-9, 1e-10]}}"


def _sweep_overrides(assets, out, *extra):
    return sft_overrides(
        assets, out, GRID, "tune.num_samples=1", "tune.metric=loss", "tune.mode=min", "tune.grace_period=1",
        "tune.reduction_factor=2", "train.max_steps=24", "eval.every_steps=4", "eval.max_samples=8", *extra,
    )  # fmt: skip


def test_asha_stops_the_learning_rates_that_cannot_learn(assets, tmp_path, local_ray):
    report = tune_run(load_config(None, _sweep_overrides(assets, tmp_path / "sweep")))

    trials = report["trials"]
    assert len(trials) == 4
    by_lr = {float(t["overrides"]["optim.lr"]): t for t in trials}
    best = trials[0]
    assert float(best["overrides"]["optim.lr"]) in (3e-3, 1e-3) and best["steps"] == 24
    for lr in (1e-9, 1e-10):
        assert by_lr[lr]["steps"] < best["steps"] and by_lr[lr]["stopped_early"], by_lr[lr]
    metrics = [t["metric"] for t in trials]
    assert metrics == sorted(metrics)  # ranked by held-out loss, lowest first
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["trials"][0]["trial_id"] == best["trial_id"]
    assert (tmp_path / "sweep" / "best_model.txt").read_text().strip().endswith("model")

    # best.yaml is a complete config: `hone run best.yaml` trains it again in its own dir.
    assert main(["run", str(tmp_path / "sweep" / "best.yaml")]) == 0
    assert json.loads((tmp_path / "sweep" / "best" / "summary.json").read_text())["steps"] == 24


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
