"""hone submit and hone jobs against a real Ray head started with token auth (one head per module)."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import closing, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from tests.ray_head import Head, start_head


@pytest.fixture(scope="module")
def head():
    head = start_head(secrets.token_hex(16))
    yield head
    head.stop()


@pytest.fixture
def token_env(head: Head, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The right token in RAY_AUTH_TOKEN; HOME moved so no ~/.ray/auth_token of this machine is read."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)


def client(head: Head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})


def job_ids(head: Head) -> set[str]:
    return {j.submission_id for j in client(head).list_jobs()}


def project(root: Path, assets: dict[str, Path], **extra: object) -> Path:
    """A config folder as a user has one: the YAML names its model and data by paths relative to itself."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(assets["llama"], root / "llama")
    shutil.copy(assets["copy"], root / "copy.jsonl")
    config = {
        "mode": "sft",
        "model": {"source": "llama"},
        "data": {"train": ["copy.jsonl"], "max_seq_len": 32},
        "optim": {"lr": 3e-3},
        "train": {"max_steps": 4, "micro_batch_per_device": 8},
        "eval": {"max_new_tokens": 4, "max_samples": 8},
        **extra,
    }
    (root / "sft.yaml").write_text(yaml.safe_dump(config))
    return root / "sft.yaml"


def closed_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hone(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def finished_job(head: Head, assets, tmp_path_factory: pytest.TempPathFactory):
    """One tiny sft run submitted with --wait, its checkpoints under a shared storage_path."""
    root = tmp_path_factory.mktemp("submit")
    config = project(root / "project", assets)
    out, storage = root / "run", root / "shared"
    env = {"RAY_AUTH_TOKEN": head.token, "HOME": str(root / "home")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        buffer = io.StringIO()
        with redirect_stdout(buffer), redirect_stderr(buffer):
            code = main(
                [
                    "submit",
                    str(config),
                    f"output_dir={out}",
                    f"scaling.storage_path={storage}",
                    "--address",
                    head.address,
                    "--wait",
                ]
            )
    text = buffer.getvalue()
    [job_id] = [line.split()[3] for line in text.splitlines() if line.startswith("hone: submitted job ")]
    return {"code": code, "output": text, "job_id": job_id, "run_dir": out, "storage": storage, "config": config}


@pytest.mark.slow
def test_submit_wait_runs_the_config_on_the_cluster(head, finished_job):
    job = finished_job
    assert job["code"] == 0, job["output"][-3000:]
    assert f"hone: job {job['job_id']} SUCCEEDED" in job["output"]
    assert "held-out metric" in job["output"]  # --wait printed the run's own output as it came
    assert f"hone: output_dir on the cluster: {job['run_dir']}" in job["output"]
    run_dir = job["run_dir"]
    assert (run_dir / "summary.json").exists() and (run_dir / "model" / "config.json").exists()
    # The job read the copies shipped in its working_dir, not this machine's files.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    [train] = saved["data"]["train"]
    # Shipped in the order the config declares its paths (training/config.py): the model, then the data.
    assert train != str(job["config"].parent / "copy.jsonl") and train.endswith("files/1-copy.jsonl")
    assert saved["model"]["source"].endswith("files/0-llama")
    assert re.search(r"/working_dir_files/_ray_pkg_[0-9a-f]+/files/", train)  # the form cluster/rundir.py relies on
    # Checkpoints went to the shared storage_path, in the run's own folder recorded in the run dir.
    [folder] = list(job["storage"].iterdir())
    assert folder.name.startswith("run-") and (folder / "step_0000004").is_dir()
    assert not (run_dir / "checkpoints").exists()
    info = client(head).get_job_info(job["job_id"])
    assert info.entrypoint == "hone run config.yaml --address auto"
    assert set(info.runtime_env) == {"working_dir"}  # no env_vars: no secret rides along
    assert head.token not in job["output"] and head.token not in repr(info)


@pytest.mark.slow
def test_no_token_or_a_wrong_token_is_refused_and_creates_no_job(head, assets, tmp_path, capsys, monkeypatch, token_env):
    config = project(tmp_path / "project", assets)
    before = job_ids(head)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    code, text = hone(capsys, "submit", str(config), f"output_dir={tmp_path / 'run'}", "--address", head.address)
    assert code == 1 and "requires a token: set RAY_AUTH_TOKEN or --token-file" in text
    code, text = hone(capsys, "jobs", "list", "--address", head.address)
    assert code == 1 and "requires a token" in text

    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(16) + "\n")
    code, text = hone(
        capsys, "submit", str(config), f"output_dir={tmp_path / 'run'}", "--address", head.address, "--token-file", str(wrong)
    )
    assert code == 1 and "the token was rejected" in text and wrong.read_text().strip() not in text
    assert job_ids(head) == before and not (tmp_path / "run").exists()

    right = tmp_path / "right_token"
    right.write_text(head.token)
    code, text = hone(capsys, "jobs", "list", "--address", head.address, "--token-file", str(right))
    assert code == 0 and "job id" in text and head.token not in text


@pytest.mark.slow
def test_jobs_status_and_logs_show_the_run(head, finished_job, capsys, token_env):
    job_id = finished_job["job_id"]
    code, text = hone(capsys, "jobs", "status", job_id, "--address", head.address)
    assert code == 0 and f"{job_id}: SUCCEEDED" in text
    code, text = hone(capsys, "jobs", "logs", job_id, "--address", head.address)
    assert code == 0 and "hone: sft run in" in text and "held-out metric" in text
    code, text = hone(capsys, "jobs", "list", "--address", head.address)
    assert job_id in text and "SUCCEEDED" in text and head.token not in text
    code, text = hone(capsys, "jobs", "status", "raysubmit_nosuchjob", "--address", head.address)
    assert code == 1 and "raysubmit_nosuchjob" in text


@pytest.mark.slow
def test_a_stopped_job_resubmitted_resumes_from_its_checkpoint_in_storage_path(head, assets, tmp_path, capsys, token_env):
    config = project(tmp_path / "project", assets)
    out, storage = tmp_path / "long", tmp_path / "shared"
    argv = [
        "submit",
        str(config),
        f"output_dir={out}",
        f"scaling.storage_path={storage}",
        "train.max_steps=30",
        "checkpoint.every_steps=5",
    ]
    code, text = hone(capsys, *argv, "--address", head.address)
    assert code == 0, text
    [job_id] = [line.split()[3] for line in text.splitlines() if line.startswith("hone: submitted job ")]
    deadline = time.monotonic() + 300
    while not registered_checkpoints(storage):  # Ray Train registered a checkpoint: a resume can use it
        assert time.monotonic() < deadline, client(head).get_job_logs(job_id)[-3000:]
        assert client(head).get_job_status(job_id).value in ("PENDING", "RUNNING"), client(head).get_job_logs(job_id)[-3000:]
        time.sleep(1)
    code, text = hone(capsys, "jobs", "stop", job_id, "--address", head.address)
    assert code == 0 and f"hone: job {job_id} STOPPED" in text
    assert client(head).get_job_status(job_id).value == "STOPPED"
    assert not (out / "summary.json").exists()

    code, text = hone(capsys, *argv, "--address", head.address, "--wait")
    assert code == 0 and "SUCCEEDED" in text, text[-3000:]
    assert re.search(r"\(resuming\)", text) and re.search(r"resumed from step (\d+)", text), text[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    assert len(list(storage.iterdir())) == 1  # the same run folder, found again through output_dir/storage.json


def registered_checkpoints(storage: Path) -> list[str]:
    snapshots = list(storage.glob("*/checkpoint_manager_snapshot.json"))
    return [name for snap in snapshots for name in re.findall(r"step_\d+", snap.read_text())]


@pytest.mark.slow
def test_bad_input_fails_fast_and_creates_no_job(head, assets, tmp_path, capsys, token_env):
    before = job_ids(head)
    config = project(tmp_path / "project", assets)
    run = f"output_dir={tmp_path / 'run'}"

    code, text = hone(capsys, "submit", str(config), run, "data.train=[/nonexistent/train.jsonl]", "--address", head.address)
    assert code == 1 and "/nonexistent/train.jsonl" in text

    # A model folder holding a 91 MiB (sparse) file: over what a job can carry.
    big = tmp_path / "project" / "llama" / "extra.bin"
    with open(big, "wb") as f:
        f.truncate(91 * 1024**2)
    code, text = hone(capsys, "submit", str(config), run, "--address", head.address)
    assert code == 1 and re.search(rf"largest: {big.parent} \(91\.\d MiB\)", text), text[-600:]
    assert "over the 90.0 MiB hone ships with a job" in text and "--shared DIR" in text
    # Under --shared it is not shipped: the size check passes, and the (closed) address is what fails.
    code, text = hone(
        capsys, "submit", str(config), run, "--address", f"http://127.0.0.1:{closed_port()}", "--shared", str(big.parent)
    )
    assert code == 1 and "over the" not in text and "could not reach" in text
    big.unlink()
    assert job_ids(head) == before and not (tmp_path / "run").exists()
    assert head.token not in capsys.readouterr().out


def test_an_unreachable_address_fails_within_the_timeout(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    config = project(tmp_path / "project", assets)
    port = closed_port()
    code, text = hone(capsys, "submit", str(config), "--address", f"http://127.0.0.1:{port}")
    assert code == 1 and f"could not reach the Ray cluster at http://127.0.0.1:{port}" in text

    # A host that takes the connection and never answers (a firewall, a wrong service) is given up on.
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, text = hone(capsys, "jobs", "list", "--address", address)
    assert code == 1 and f"the Ray cluster at http://{address} did not answer within 10 s" in text
    assert time.monotonic() - started < 30
    assert os.environ["RAY_AUTH_TOKEN"] not in text
