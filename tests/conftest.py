"""Shared fixtures: tiny models and data written to temp dirs, and a Ray cluster per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hone.cluster.connect import own_state_api
from tests.tiny import copy_rows, make_causal_model, make_masked_model, text_rows, write_jsonl

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    return {
        "llama": make_causal_model(root / "llama"),
        "bert": make_masked_model(root / "bert"),
        "copy": write_jsonl(root / "copy.jsonl", copy_rows(240)),
        "text": write_jsonl(root / "text.jsonl", text_rows(160)),
    }


def sft_overrides(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """A tiny sft run that learns in a few dozen CPU steps."""
    return [
        "mode=sft",
        f"output_dir={out}",
        f"model.source={assets['llama']}",
        f"data.train=[{assets['copy']}]",
        "data.max_seq_len=32",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "train.max_steps=20",
        "train.micro_batch_per_device=8",
        "eval.max_new_tokens=6",
        "eval.max_samples=16",
        *extra,
    ]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray cluster for a module's runs (hone reuses a connected Ray instead of starting one)."""
    import ray

    temp = tmp_path_factory.mktemp("ray")
    with own_state_api() as port:  # its state API, not another cluster's on this machine
        ray.init(
            address="local", num_cpus=4, include_dashboard=True, dashboard_port=port, _temp_dir=str(temp), logging_level="WARNING"
        )
        yield
        ray.shutdown()


@pytest.fixture
def busy_neighbour(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Another hone run on this machine, on its own embedded cluster, for the whole test: the test's cluster
    operations (placement-group cleanup, state-API calls, worker kills) must not touch it, nor it them.
    Its training worker is paused (SIGSTOP) once it trains, so it takes no CPU from the test while its
    cluster (controller, placement-group cleaner, state API) runs on; afterwards it must train on."""
    import signal
    import subprocess
    import sys
    import time

    from hone.training.files import read_jsonl
    from tests.processes import kill_session, session_pids

    root = tmp_path_factory.mktemp("neighbour")
    (root / "run.yaml").write_text("{}\n")
    out = root / "run"
    # max_failures=0: a worker of its own killed by the test ends it, and the fixture fails
    args = sft_overrides(
        assets, out, "train.max_steps=1000000", "checkpoint.every_steps=0", "eval.max_samples=4", "scaling.max_failures=0"
    )
    command = [sys.executable, "-m", "hone.cluster.cli", "run", "run.yaml", *args]
    log = (root / "log.txt").open("w")
    proc = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not read_jsonl(out / "metrics.jsonl"):  # training: its cluster and placement group are up
        assert proc.poll() is None and time.monotonic() < deadline, (root / "log.txt").read_text()[-3000:]
        time.sleep(0.5)
    workers = [pid for pid in session_pids(proc.pid) if _command_line(pid).startswith("ray::RayTrainWorker")]
    assert workers, "no training worker found in the neighbouring run"
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    yield
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    steps = len(read_jsonl(out / "metrics.jsonl"))
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(read_jsonl(out / "metrics.jsonl")) <= steps + 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = proc.poll() is None
    kill_session(proc.pid)
    proc.wait(timeout=60)
    log.close()
    output = (root / "log.txt").read_text()
    assert alive, f"the neighbouring run died during the test:\n{output[-3000:]}"
    assert "Cleaning up placement group" not in output, "the neighbouring run lost its placement group"
    assert len(read_jsonl(out / "metrics.jsonl")) > steps + 10, "the neighbouring run did not train on"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
