"""Resume: a killed run, rerun with the same command, continues from its last checkpoint and ends where an
uninterrupted run ends; a worker killed mid-run is replaced by Ray Train from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hone.cluster.run import run
from hone.cluster.rundir import registered_checkpoints
from hone.training.checkpoints import COMMITTED
from hone.training.config import load_config
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides
from tests.processes import kill_session

pytestmark = pytest.mark.slow

STEPS = 60
FAILOVER_STEPS = 150  # long enough that the worker is still training when it is killed past step 20
# Dropout is off in the tiny model and the data order is a function of the step, so a resumed run should
# reproduce an uninterrupted one up to float summation order; 1e-4 leaves room for that.
TOLERANCE = 1e-4


def overrides(assets: dict[str, Path], out: Path, steps: int = STEPS) -> list[str]:
    return sft_overrides(assets, out, f"train.max_steps={steps}", "checkpoint.every_steps=10", "optim.lr=1e-3")


def hone_run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "hone.cluster.cli", "run", "none.yaml", *args], env=env, **kwargs)


def metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(out / "metrics.jsonl")]


def final(out: Path) -> tuple[float, float]:
    summary = json.loads((out / "summary.json").read_text())
    last = read_jsonl(out / "metrics.jsonl")[-1]
    return summary["eval"]["after"]["loss"], last["loss"]


def resume_step(folder: Path) -> int:
    """The checkpoint a rerun resumes from: the newest one Ray Train registered or hone committed."""
    committed = {p.parent.name for p in folder.glob(f"step_*/{COMMITTED}")}
    return max(int(name.split("_")[1]) for name in registered_checkpoints(folder) | committed)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "none.yaml"
    path.write_text("{}\n")
    return path


def test_killed_run_resumes_from_its_checkpoint_and_matches(assets, tmp_path, config_file):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert hone_run(overrides(assets, whole), cwd=tmp_path).wait(timeout=600) == 0
    # checkpoint.keep=2 (default): of the 6 checkpoints written, the last two are kept.
    assert sorted(p.name for p in (whole / "checkpoints").glob("step_*")) == ["step_0000050", "step_0000060"]

    first = hone_run(overrides(assets, broken), cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(s >= 25 for s in metric_steps(broken)):
        assert first.poll() is None and time.monotonic() < deadline, "run ended before it could be interrupted"
        time.sleep(0.05)
    kill_session(first.pid)
    first.wait()
    assert not (broken / "summary.json").exists()
    assert max(metric_steps(broken)) < STEPS
    # The driver writes metrics.jsonl a poll behind the workers, so a kill just after a checkpoint leaves
    # the file a few steps short of it (seen in CI). Made certain here: the file is cut 3 steps short of
    # the checkpoint the rerun resumes from, and the rerun must fill those steps from the checkpoint.
    newest = resume_step(broken / "checkpoints")
    cut = [r for r in read_jsonl(broken / "metrics.jsonl") if r["step"] <= newest - 3]
    (broken / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cut))

    second = hone_run(overrides(assets, broken), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in output.splitlines() if "resumed from step" in line]
    assert resumed == [newest], (resumed, newest)
    assert metric_steps(broken) == list(range(1, STEPS + 1))  # every step once, none double-counted, no gap
    for a, b in zip(final(whole), final(broken), strict=True):
        assert abs(a - b) < TOLERANCE, (final(whole), final(broken))


@pytest.mark.usefixtures("local_ray", "busy_neighbour")  # and another hone run training meanwhile
def test_a_killed_worker_is_restarted_from_the_last_checkpoint(assets, tmp_path):
    from ray.util.state import list_actors

    out = tmp_path / "failover"
    killed: list[int] = []

    def kill_worker_once_past_step_20() -> None:
        deadline = time.monotonic() + 900  # start-up and the base eval come first; slow on a loaded machine
        while time.monotonic() < deadline and not any(s >= 20 for s in metric_steps(out)):
            time.sleep(0.05)
        alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        for actor in alive:
            os.kill(actor["pid"], signal.SIGKILL)
            killed.append(actor["pid"])

    killer = threading.Thread(target=kill_worker_once_past_step_20)
    killer.start()
    summary = run(load_config(None, overrides(assets, out, FAILOVER_STEPS)))
    killer.join()
    assert killed, "no worker was killed"
    assert summary["steps"] == FAILOVER_STEPS
    assert metric_steps(out) == list(range(1, FAILOVER_STEPS + 1))
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"]
