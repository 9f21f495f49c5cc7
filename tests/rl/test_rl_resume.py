"""A killed RL run, rerun with the same command, continues at the step after its last checkpoint."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.test_resume import config_file, hone_run, metric_steps  # noqa: F401  (config_file is a fixture)
from tests.processes import kill_session
from tests.rl.conftest import rl_overrides

pytestmark = pytest.mark.slow

STEPS = 150


def test_killed_rl_run_continues_at_the_next_step(assets, prompts, tmp_path, config_file):  # noqa: F811
    out = tmp_path / "run"
    args = rl_overrides(assets, prompts, out, f"train.max_steps={STEPS}", "checkpoint.every_steps=5")
    first = hone_run(args, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(s >= 12 for s in metric_steps(out)):
        assert first.poll() is None and time.monotonic() < deadline, "run ended before it could be interrupted"
        time.sleep(0.02)
    kill_session(first.pid)
    first.wait()
    killed_at = max(metric_steps(out))
    assert killed_at < STEPS and not (out / "summary.json").exists()

    second = hone_run(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in output.splitlines() if "resumed from step" in line]
    assert resumed and 10 <= resumed[0] <= killed_at and resumed[0] % 5 == 0, (resumed, killed_at)
    assert metric_steps(out) == list(range(1, STEPS + 1))  # continues at resumed + 1; no step twice
    assert "evaluating the base policy" not in output  # the base evaluation was kept from the first run
    kept = sorted((out / "checkpoints").glob("step_*"))
    assert kept and all((c / "rng_rank0.pt").is_file() for c in kept)  # dropout draws resume where they stopped
