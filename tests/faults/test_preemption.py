"""SIGTERM (what Kubernetes, Slurm and spot reclaims send) and Ctrl-C: a checkpoint at the next step,
one line, the shell's exit status; the same command again resumes from that step."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hone.training.files import read_jsonl
from tests.conftest import sft_overrides
from tests.rl.conftest import prompts as _prompts
from tests.rl.conftest import rl_overrides

prompts = _prompts  # the RL tests' prompts fixture, here too

pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    (cwd / "run.yaml").write_text("{}\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "-m", "hone.cluster.cli", "run", "run.yaml", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_at_step(proc: subprocess.Popen, out: Path, step: int, signum: int) -> tuple[int, str, str]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_jsonl(out / "metrics.jsonl")) >= step:
            proc.send_signal(signum)
            break
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def _stopped_at(stderr: str, name: str) -> int:
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"hone: stopped by {name} at step (\d+), with a checkpoint of that step saved; rerun .*", last)
    assert found, stderr[-3000:]
    assert "Traceback" not in stderr
    return int(found.group(1))


def test_a_signalled_sft_run_checkpoints_then_resumes_where_it_stopped(assets, tmp_path):
    """SIGTERM, then Ctrl-C in the resumed run, then a run to the end: each stop saves its step."""
    out = tmp_path / "run"
    args = sft_overrides(assets, out, "train.max_steps=300", "eval.max_samples=4")  # no periodic checkpoint
    stopped = 0
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        returncode, stdout, stderr = _signal_at_step(_start(args, tmp_path), out, stopped + 5, signum)
        assert returncode == code, stderr[-3000:]
        if stopped:
            assert f"resumed from step {stopped}" in stdout + stderr
        stopped = _stopped_at(stderr, signal.Signals(signum).name)
        assert (out / "checkpoints" / f"step_{stopped:07d}").is_dir()

    rerun = _start(args, tmp_path)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"resumed from step {stopped}" in stdout + stderr
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, 301))  # nothing lost, nothing counted twice


def test_a_sigtermed_rl_run_checkpoints_then_resumes_where_it_stopped(assets, prompts, tmp_path):
    out = tmp_path / "run"
    args = rl_overrides(assets, prompts, out, "train.max_steps=200")
    returncode, _, stderr = _signal_at_step(_start(args, tmp_path), out, 3, signal.SIGTERM)
    assert returncode == 143, stderr[-3000:]
    stopped = _stopped_at(stderr, "SIGTERM")
    assert (out / "checkpoints" / f"step_{stopped:07d}" / "COMMITTED").exists()
    rerun = _start(args, tmp_path)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, 201))
