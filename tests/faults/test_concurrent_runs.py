"""Two hone runs on one machine, each on its own embedded cluster, never touch each other's placement
groups (Ray Train's cleaner used to ask the other cluster's state API and remove its own run's group)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hone.training.files import read_jsonl
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


def _start(args: list[str], cwd: Path, **env_vars: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "run.yaml").write_text("{}\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", **env_vars}
    command = [sys.executable, "-m", "hone.cluster.cli", "run", "run.yaml", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_embedded_runs_at_once_both_finish_untouched(assets, tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b")}
    # Each its own short HONE_RAY_TMP (Ray's socket paths must fit 107 bytes); run a keeps its session.
    ray_tmp = {name: Path(tempfile.mkdtemp(dir="/tmp")) for name in runs}
    keep = {"a": {"HONE_KEEP_RAY_TMP": "1"}, "b": {}}
    procs = {
        name: _start(
            sft_overrides(assets, out / "run", "train.max_steps=60", "eval.max_samples=4", "scaling.max_failures=0"),
            out,
            HONE_RAY_TMP=str(ray_tmp[name]),
            **keep[name],
        )
        for name, out in runs.items()
    }
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"run {name}:\n{output[-3000:]}"
        assert "Cleaning up placement group" not in output, f"run {name} lost its placement group"
    for out in runs.values():
        assert [r["step"] for r in read_jsonl(out / "run" / "metrics.jsonl")] == list(range(1, 61))
    # A finished run leaves no Ray session behind; one kept (HONE_KEEP_RAY_TMP=1) is this user's only.
    assert list(ray_tmp["b"].iterdir()) == []
    [session] = list(ray_tmp["a"].iterdir())
    assert session.name.startswith("hone-") and stat.S_IMODE(session.stat().st_mode) == 0o700  # Ray made its own 0777
    assert (session / "ray").is_dir()
    for folder in ray_tmp.values():
        shutil.rmtree(folder)


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


def test_every_process_of_an_embedded_run_asks_its_own_state_api(monkeypatch):
    """What Ray Train's placement-group cleaner does, checked where it happens: a Ray worker resolves the
    state API from its environment, and there RAY_ADDRESS (a tunnel to another cluster, exported for
    `hone jobs`) would win over the cluster it belongs to."""
    import ray
    from ray.dashboard.utils import get_address_for_submission_client

    from hone.cluster.connect import ray_session

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # another cluster's dashboard
    with ray_session(None):
        own = f"http://{ray._private.worker.get_dashboard_url()}"
        asked = ray.get(ray.remote(num_cpus=0)(get_address_for_submission_client).remote(None))
    assert asked == own


def test_the_embedded_clusters_http_api_listens_on_loopback_only():
    """The dashboard (job submission, the state API: code execution for whoever reaches it) binds 127.0.0.1.
    Ray 2.60's gRPC servers (GCS, raylet, workers) bind every interface whatever the node IP is; they
    require the cluster's token, which hone makes owner-only (test_security)."""
    import psutil
    import ray

    from hone.cluster.connect import ray_session

    with ray_session(None):
        port = int(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
