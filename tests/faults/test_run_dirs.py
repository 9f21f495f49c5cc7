"""A user's folders are never deleted, a rerun never wipes its run, and two hone runs never share a run dir."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from hone.cluster.cli import main
from hone.cluster.progress import MetricsFile
from hone.cluster.rundir import MARKER, RunDirError, claim, finished_run, inspect, lock_path, run_dir_lock
from hone.training.config import load_config
from hone.training.files import TornFileError, read_jsonl, write_json


def _cfg(tmp_path: Path, out: Path | str, *extra: str):
    data = tmp_path / "inputs" / "train.jsonl"
    if not data.exists():
        data.parent.mkdir(exist_ok=True)
        data.write_text('{"prompt": "a", "completion": "b"}\n')
    return load_config(None, ["model.source=org/model", f"data.train=[{data}]", f"output_dir={out}", *extra])


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _user_folder(path: Path, with_marker: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.md").write_text("the user's own notes")
    (path / "config.yaml").write_text("optim: {lr: 1.0}\n")  # even a config.yaml does not make it a hone run
    if with_marker:
        write_json(path / MARKER, {"run_id": "x"})
    return path


def test_overwrite_never_deletes_a_folder_hone_did_not_make(tmp_path):
    out = _user_folder(tmp_path / "mine")
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"holds no hone run \(no \.hone-run marker\).*even with overwrite=true"):
        claim(_cfg(tmp_path, out, "overwrite=true"))
    assert _snapshot(out) == before


def test_overwrite_refuses_the_root_home_working_dir_and_any_folder_holding_the_inputs(tmp_path, monkeypatch):
    with pytest.raises(RunDirError, match="output_dir is empty"):
        inspect(_cfg(tmp_path, "", "overwrite=true"))
    with pytest.raises(RunDirError, match="no .hone-run marker"):  # read-only: `/` is only inspected
        inspect(_cfg(tmp_path, "/", "overwrite=true"))
    home = _user_folder(tmp_path / "home", with_marker=True)
    monkeypatch.setenv("HOME", str(home))
    work = _user_folder(tmp_path / "work", with_marker=True)
    monkeypatch.chdir(work)
    cases = {home: "your home directory", work: "the working directory", tmp_path: "which this run reads"}
    write_json(tmp_path / MARKER, {"run_id": "x"})  # tmp_path holds inputs/train.jsonl
    for out, why in cases.items():
        before = _snapshot(out)
        with pytest.raises(RunDirError, match=why):
            claim(_cfg(tmp_path, out, "overwrite=true"))
        assert _snapshot(out) == before, out


def test_overwrite_is_not_saved_and_the_same_command_again_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out, "overwrite=true")
    assert claim(cfg) == (out, "new")
    assert "overwrite" not in yaml.safe_load((out / "config.yaml").read_text())
    (out / "checkpoints" / "step_0000100").mkdir(parents=True)
    assert claim(cfg) == (out, "resume")  # the resume command after a preemption: nothing wiped
    assert (out / "checkpoints" / "step_0000100").is_dir()
    changed = _cfg(tmp_path, out, "overwrite=true", "optim.lr=1e-3")
    assert claim(changed) == (out, "new") and not (out / "checkpoints").exists()  # a different run is replaced


def test_validate_names_what_the_output_dir_holds(tmp_path, capsys):
    out = _user_folder(tmp_path / "notarun")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{source: org/model}}\ndata: {{train: [inputs/train.jsonl]}}\noutput_dir: {out}\n")
    _cfg(tmp_path, out)  # writes the data file
    assert main(["validate", str(config)]) == 1
    assert "is not empty and holds no hone run" in capsys.readouterr().err


HOLDER = """
import sys, time
from hone.cluster.rundir import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_hone_on_a_running_run_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(RunDirError, match=rf"is in use by hone pid {holder.pid} on .*nothing was changed"):
            with run_dir_lock(out):
                pytest.fail("took a lock another process holds")
        assert time.monotonic() - started < 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_dir_lock(out):  # the kernel released a dead holder's lock: it never goes stale
        assert f"pid {os.getpid()}" in lock_path(out.resolve()).read_text()


def test_torn_run_files_are_reported_not_raised_as_tracebacks(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out)
    claim(cfg)
    (out / "summary.json").write_text('{"mode": "sft", "eval": {"bef')  # an older hone killed mid-write
    with pytest.raises(TornFileError, match=r"summary.json is torn or not JSON"):
        finished_run(out)
    metrics = out / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
    with pytest.warns(UserWarning, match="dropped its torn last line 2"):
        assert [r["step"] for r in MetricsFile(metrics).lines] == [1]
    metrics.write_text('{"step": 1, "lo\n' + json.dumps({"step": 2, "loss": 2.0}) + "\n")
    with pytest.raises(TornFileError, match="line 1 of 2 is not JSON"):
        read_jsonl(metrics)
    (out / "config.yaml").write_text("mode: sft\noptim: {lr: [")
    with pytest.raises(RunDirError, match="config.yaml is torn or not YAML"):
        inspect(cfg)


def test_a_complete_checkpoint_ray_had_not_registered_is_kept_and_resumed_from(tmp_path):
    from hone.cluster.rundir import newest_committed, remove_orphan_checkpoints
    from hone.training.checkpoints import COMMITTED

    folder = tmp_path / "checkpoints"
    for step in (50, 100, 150):
        (folder / f"step_{step:07d}").mkdir(parents=True)
    (folder / "step_0000100" / COMMITTED).write_text("")  # complete, stopped before Ray's next poll
    write_json(folder / "checkpoint_manager_snapshot.json", {"latest_checkpoint_result": {"checkpoint_dir_name": "step_0000050"}})
    assert remove_orphan_checkpoints(tmp_path, folder) == ["step_0000150"]  # only the half-written one
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_0000050", "step_0000100"]
    assert newest_committed(folder) == str(folder / "step_0000100")


def test_a_data_file_edited_under_a_run_is_refused_by_name_and_overwrite_reruns_it(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out)
    assert claim(cfg) == (out, "new")
    assert claim(cfg) == (out, "resume")
    data = tmp_path / "inputs" / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "edited"}\n')
    with pytest.raises(RunDirError, match=rf"data.train\[0\]: {data} changed since the run started"):
        claim(cfg)
    (out / "summary.json").write_text("{}")  # a finished run is not shown as if its data were the same either
    with pytest.raises(RunDirError, match="changed since the run started"):
        inspect(cfg)
    assert claim(_cfg(tmp_path, out, "overwrite=true")) == (out, "new")  # the edited data trains afresh
    assert claim(cfg) == (out, "resume")


def test_a_sweep_rerun_with_another_search_space_is_refused_before_ray_starts(assets, tmp_path):
    import ray

    from hone.cluster.tune import tune_run

    sweep = tmp_path / "sweep"

    def sweep_cfg(values: str, *extra: str):
        args = ["mode=sft", f"model.source={assets['llama']}", f"data.train=[{assets['copy']}]", f"output_dir={sweep}"]
        space = f"tune.space={{optim.lr: {{type: grid, values: {values}}}}}"
        return load_config(None, [*args, space, "tune.scheduler=none", "data.max_seq_len=32", *extra])

    claim(sweep_cfg("[1e-3, 1e-2]"))  # what the first sweep took
    (sweep / "tune").mkdir()
    (sweep / "tune" / "experiment_state.json").write_text("{}")  # the old sweep's Tune state
    before = _snapshot(sweep)
    with pytest.raises(RunDirError, match=r"holds a different run \(config differs in: tune.space"):
        tune_run(sweep_cfg("[1e-4]"))
    assert not ray.is_initialized() and _snapshot(sweep) == before
