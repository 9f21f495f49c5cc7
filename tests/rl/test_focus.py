"""rl.focus=missed: the steps draw only from the prompts the starting policy answers worse than its best,
decided once and kept for a resumed run."""

from __future__ import annotations

import json

import pytest

from hone.cluster.run import run
from hone.rl.controller import missed_prompts, step_prompts
from hone.training.config import load_config
from tests.rl.conftest import rl_overrides


def test_missed_prompts_are_those_below_the_best_score():
    assert missed_prompts({4: 1.5, 9: 0.5, 2: 1.5, 7: 0.0, 3: float("nan")}) == [9, 7]
    assert missed_prompts({0: 1.0, 1: 1.0}) == []  # all alike: none is known to be missed
    assert missed_prompts({0: float("nan")}) == []


def test_steps_draw_from_the_pool_only_and_cover_it_before_repeating():
    pool = [3, 7, 11, 20, 21]
    drawn = [step_prompts(pool, step, 2, seed=1) for step in range(5)]
    flat = [i for d in drawn for i in d]
    assert set(flat) == set(pool) and sorted(flat[:5]) == pool  # the first epoch is a permutation of the pool
    assert step_prompts(list(range(6)), 1, 3, seed=4) == step_prompts(list(range(6)), 1, 3, seed=4)
    everything = list(range(9))
    assert step_prompts(everything, 2, 3, 0) == [everything[i] for i in step_prompts(everything, 2, 3, 0)]


@pytest.mark.slow
def test_a_focused_run_scans_the_train_prompts_once_and_trains_on_the_missed_ones(assets, prompts, tmp_path, local_ray, capsys):
    out = tmp_path / "run"
    cfg = load_config(None, rl_overrides(assets, prompts, out, "train.max_steps=2", "rl.focus=missed"))
    run(cfg)
    focus = json.loads((out / "focus.json").read_text())
    scores = focus["scores"]  # answered until 2 steps x 8 prompts were missed (64 at a time)
    assert focus["scanned"] == len(scores) >= 16 and focus["prompts"] >= len(scores)
    assert len(focus["kept"]) >= 16 and all(scores[str(i)] < max(scores.values()) for i in focus["kept"])
    assert "answered scored below the best" in capsys.readouterr().out
