"""A step's loss is the sum over every target token of the global batch divided by their count, however
the batch is split into micro-batches, accumulation steps and workers (issue 15): rows of different
lengths weigh the same in every split, so one optimizer step moves the model the same way in each."""

from __future__ import annotations

import pytest

from hone.cluster.run import run
from hone.training.config import load_config
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow

# (micro_batch_per_device, grad_accum, num_workers): 8 rows per step in each.
SPLITS = [(8, 1, 1), (2, 4, 1), (4, 1, 2), (2, 2, 2)]


def test_every_split_of_a_global_batch_takes_the_same_step(assets, tmp_path, local_ray):
    """copy rows have 2-4 letters, so micro-batches differ in target count: averaging each micro-batch (or
    rank) on its own would weigh a short row's tokens more in some splits than in others."""
    steps = {}
    for micro, accum, workers in SPLITS:
        out = tmp_path / f"m{micro}a{accum}w{workers}"
        overrides = sft_overrides(
            assets, out, "train.max_steps=2", f"train.micro_batch_per_device={micro}", f"train.grad_accum={accum}",
            f"scaling.num_workers={workers}", "eval.max_samples=2", "optim.warmup_steps=0",
        )  # fmt: skip
        run(load_config(None, overrides))
        steps[(micro, accum, workers)] = read_jsonl(out / "metrics.jsonl")
    first = steps[SPLITS[0]]
    assert "grad_norm" in first[0]
    for split, records in steps.items():
        # step 1: the same rows at the same weights, so the same loss and the same gradient (its norm);
        # step 2's loss then shows the same update was applied.
        assert records[0]["grad_norm"] == pytest.approx(first[0]["grad_norm"], rel=1e-6, abs=1e-7), split
        assert records[0]["loss"] == pytest.approx(first[0]["loss"], rel=1e-6), split
        assert records[1]["loss"] == pytest.approx(first[1]["loss"], rel=1e-6), split
