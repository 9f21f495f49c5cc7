"""metrics.jsonl across a resume: steps replayed from a checkpoint fill a gap and never double-count."""

from __future__ import annotations

from pathlib import Path

from hone.cluster.progress import REPLAYED, MetricsFile
from hone.training.files import read_jsonl


def steps(path: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(path)]


def fill(path: Path, upto: int) -> MetricsFile:
    metrics = MetricsFile(path)
    for step in range(1, upto + 1):
        metrics.add({"step": step, "loss": 1.0})
    return MetricsFile(path)  # as a rerun reads it


def test_replayed_steps_fill_the_gap_a_lagging_driver_left(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = fill(path, 7)  # killed with the checkpoint at 10 saved but only 7 steps written
    added = [metrics.add({"step": s, "loss": 2.0, REPLAYED: True}) for s in range(1, 11)]
    assert added == [False] * 7 + [True] * 3
    metrics.add({"step": 11, "loss": 3.0})
    assert steps(path) == list(range(1, 12))
    assert [r["loss"] for r in read_jsonl(path)][6:] == [1.0, 2.0, 2.0, 2.0, 3.0]  # kept lines untouched
    assert all(REPLAYED not in r for r in read_jsonl(path))


def test_steps_past_the_checkpoint_are_replaced_by_the_resumed_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = fill(path, 14)  # the file ran ahead of the checkpoint at 10
    assert not any(metrics.add({"step": s, "loss": 2.0, REPLAYED: True}) for s in range(1, 11))
    metrics.add({"step": 11, "loss": 3.0})
    assert steps(path) == list(range(1, 12))
    assert read_jsonl(path)[-1]["loss"] == 3.0
