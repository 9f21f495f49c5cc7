"""The metrics writer failing mid-run (a full disk, a W&B error) stops the run loudly with a checkpoint;
training never goes on unlogged."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from hone.cluster.cli import main
from hone.training.checkpoints import COMMITTED
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

STEPS = 5000  # far more than run before the fault; the test ends the run by breaking its log


def test_a_metrics_file_that_cannot_be_written_stops_the_run_with_a_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"

    def break_the_log_once_it_is_written() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(r["step"] >= 5 for r in read_jsonl(metrics)):
            time.sleep(0.05)
        shutil.move(metrics, out / "metrics.saved")
        metrics.mkdir()  # appending to metrics.jsonl now fails, as on a full or read-only disk

    breaker = threading.Thread(target=break_the_log_once_it_is_written)
    breaker.start()
    args = sft_overrides(assets, out, f"train.max_steps={STEPS}", "checkpoint.every_steps=0", "scaling.max_failures=0")
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    code = main(["run", str(config), *args])
    breaker.join()
    err = capsys.readouterr().err
    assert code == 1
    assert "writing metrics.jsonl / W&B failed (IsADirectoryError" in err and "rerun the same command to resume" in err
    saved = sorted(p.parent.name for p in (out / "checkpoints").glob(f"step_*/{COMMITTED}"))
    assert saved, "the run stopped without a checkpoint"
    assert int(saved[-1].split("_")[1]) < STEPS and not (out / "summary.json").exists()
