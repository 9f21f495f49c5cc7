"""Every example config runs as the README and docs show it: `hone run` / `hone tune` in a fresh process
that starts its own local Ray cluster with this machine's CPUs (2 in CI). Only the model (a tiny one), the
number of steps and trials, and the output dir are overridden; resources never are, so an example that
asks for more CPUs than a 2-core machine has fails here, as it would for a user. The sweep is also stopped
once a trial has finished and rerun: it resumes without training that trial again.

examples/handbook/pipeline.yaml is the main job; tests/e2e/test_handbook_pipeline.py runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import kill_session

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").glob("*/*.yaml"))
MAIN_JOB = "examples/handbook/pipeline.yaml"
# Fewer steps and trials than the examples take; nothing else.
SHORTER = {
    "examples/quickstart/sft.yaml": ("run", ["train.max_steps=4", "eval.max_samples=4"]),
    "examples/rl/arithmetic.yaml": ("run", ["train.max_steps=3", "eval.max_samples=4"]),
    "examples/tune/sft_lr.yaml": ("tune", ["train.max_steps=8", "tune.num_samples=2", "eval.max_samples=4"]),
}


def test_every_example_config_is_run_here():
    assert sorted([*SHORTER, MAIN_JOB]) == EXAMPLES, "a new example config needs an entry in SHORTER"


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(SHORTER))
def test_the_example_runs_as_documented(example, assets, tmp_path):
    command, shorter = SHORTER[example]
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "hone.cluster.cli", command, str(REPO / example)]
    argv += [f"model.source={assets['llama']}", f"output_dir={out}", *shorter]
    if command == "tune":
        # Stopped once a trial has finished, then rerun as the docs say: the finished trial is not trained again.
        first = subprocess.Popen(argv, cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 400
        while not _tune_saved_a_finished_trial(out):
            assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be interrupted"
            time.sleep(0.1)
        kill_session(first.pid)
        first.wait()
        [done_trial] = list(out.glob("trials/*/summary.json"))
        finished_at = done_trial.stat().st_mtime
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if command == "tune":
        assert done_trial.stat().st_mtime == finished_at
        report = json.loads((out / "sweep.json").read_text())
        assert len(report["trials"]) == 2 and (out / "best.yaml").is_file()
        assert max(t["steps"] for t in report["trials"]) == 8
    else:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == int(shorter[0].split("=")[1])
        assert (out / "model" / "config.json").is_file()


def _tune_saved_a_finished_trial(sweep: Path) -> bool:
    """Whether a trial that wrote its summary.json is TERMINATED in Tune's saved experiment state, the file a
    resumed sweep reads. Tune saves it at most every 10 s (~6 s after a toy trial returned), so a sleep races it."""
    finished = {p.parent.name for p in sweep.glob("trials/*/summary.json")}
    for path in (sweep / "tune").glob("experiment_state-*.json"):
        try:
            trials = [json.loads(trial) for trial, _ in json.loads(path.read_text())["trial_data"]]
        except (OSError, ValueError):  # being copied there as we read it
            continue
        if any(t["trial_id"] in finished and t["status"] == "TERMINATED" for t in trials):
            return True
    return False
