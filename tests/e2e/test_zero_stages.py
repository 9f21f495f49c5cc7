"""ZeRO stages 0, 1 and 2 each train a few steps on 2 workers."""

import json

import pytest

from hone.cluster.run import run
from hone.training.config import load_config
from tests.conftest import sft_overrides

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stage_trains_on_two_workers(assets, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    overrides = sft_overrides(assets, out, f"deepspeed.zero_stage={stage}", "scaling.num_workers=2", "train.max_steps=6")
    summary = run(load_config(None, [*overrides, "train.micro_batch_per_device=4", "eval.max_samples=4"]))
    assert [w["rank"] for w in summary["workers"]] == [0, 1]
    assert all(w["zero_stage"] == stage for w in summary["workers"])
    assert summary["global_batch"] == 8
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"]
