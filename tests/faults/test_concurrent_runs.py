"""Two hone runs on one machine, each on its own embedded cluster, never touch each other's placement
groups (Ray Train's cleaner used to ask the other cluster's state API and remove its own run's group)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hone.training.files import read_jsonl
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "run.yaml").write_text("{}\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "-m", "hone.cluster.cli", "run", "run.yaml", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_embedded_runs_at_once_both_finish_untouched(assets, tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b")}
    procs = {
        name: _start(
            sft_overrides(assets, out / "run", "train.max_steps=60", "eval.max_samples=4", "scaling.max_failures=0"), out
        )
        for name, out in runs.items()
    }
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"run {name}:\n{output[-3000:]}"
        assert "Cleaning up placement group" not in output, f"run {name} lost its placement group"
    for out in runs.values():
        assert [r["step"] for r in read_jsonl(out / "run" / "metrics.jsonl")] == list(range(1, 61))


def test_a_run_ignores_the_cluster_ray_address_names(assets, tmp_path):
    """RAY_ADDRESS exported for `hone jobs` (a tunnel to a cluster's dashboard) must not lead the local
    run's Ray processes to that cluster: there its controller is unknown, so it would count as dead."""
    import ray

    from hone.cluster.connect import own_state_api

    with own_state_api() as port:  # the other cluster, with a dashboard of its own
        ray.init(address="local", num_cpus=1, include_dashboard=True, dashboard_port=port, logging_level="WARNING")
    try:
        out = tmp_path / "a"
        args = sft_overrides(assets, out / "run", "train.max_steps=60", "eval.max_samples=4", "scaling.max_failures=0")
        os.environ["RAY_ADDRESS"] = f"http://127.0.0.1:{port}"
        try:
            proc = _start(args, out)
        finally:
            del os.environ["RAY_ADDRESS"]
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-3000:]
        assert "Cleaning up placement group" not in output
    finally:
        ray.shutdown()
