"""The run directory: claim it safely, and decide between a new run, a resume and a finished run.

A folder holding a different run is refused (and left untouched) unless `overwrite=true` is set, and
even then hone deletes only a folder it made itself (it holds the `.hone-run` marker), never the working
directory, the home directory, `/` or a folder holding the run's own inputs. The same run again (same
config) always resumes, with or without overwrite, so rerunning a command can never wipe it. While a
run trains its folder is locked: a second hone on it stops at once, naming the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hone.training.checkpoints import COMMITTED
from hone.training.config import HoneConfig, PathKind, map_paths, to_dict, to_yaml
from hone.training.errors import HoneError
from hone.training.files import fingerprint, read_json, write_json, write_text

# Settings that may change between a run and its resume without making it a different run.
RESUMABLE_CHANGES = {"overwrite", "scaling.placement_timeout_s", "scaling.max_failures"}
MARKER = ".hone-run"  # written into every folder hone claims; only a folder holding it may be replaced


class RunDirError(HoneError, RuntimeError):
    """The output dir cannot be used for this run; nothing in it was changed."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# A job sent by `hone submit` reads its files from Ray's copy of the job's working dir,
# <session dir>/.../working_dir_files/_ray_pkg_<hash of the content>/. After a cluster restart the session
# dir differs but the hash does not: the same submission is still the same run, changed files are not.
_SHIPPED_PREFIX = re.compile(r"^.*/working_dir_files/(_ray_pkg_[0-9a-f]+/)")


def _session_free(value: Any) -> Any:
    if isinstance(value, str):
        return _SHIPPED_PREFIX.sub(r"\1", value)
    if isinstance(value, list):
        return [_session_free(v) for v in value]
    return value


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    defaults = flatten(to_dict(HoneConfig()))

    def differs(key: str) -> bool:
        if key in RESUMABLE_CHANGES:
            return False
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            return False  # a setting newer than the saved run, left at its default: the run ran that way
        return _session_free(a.get(key)) != _session_free(b.get(key))

    return sorted(k for k in a.keys() | b.keys() if differs(k))


def inspect(cfg: HoneConfig) -> tuple[Path, str]:
    """Read-only: the run dir and what claiming it would mean ("new", "replace", "resume", "finished").
    Raises RunDirError for a dir that must not be used."""
    if not cfg.output_dir.strip():
        raise RunDirError("output_dir is empty (an unset variable?): name the folder the run should write, e.g. runs/my-run")
    out = Path(cfg.output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file; point output_dir at a folder")
    if out.exists() and any(p.name != MARKER for p in out.iterdir()):
        return out, _existing_state(cfg, out)
    return out, "new"


def claim(cfg: HoneConfig) -> tuple[Path, str]:
    """Take the run dir: returns it and its state, "new", "resume" or "finished"."""
    out, state = inspect(cfg)
    if state in ("resume", "finished"):
        _mark(out)  # a run dir from before the marker existed becomes one hone may replace later
        if not (out / INPUTS).exists():
            write_json(out / INPUTS, input_fingerprints(cfg))
        return out, state
    if state == "replace":
        _remove_checkpoints_elsewhere(out)
        shutil.rmtree(out)
        print(f"hone: overwrite=true, removed the earlier run in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    _mark(out)
    write_text(out / "config.yaml", to_yaml(cfg))
    write_json(out / INPUTS, input_fingerprints(cfg))
    return out, "new"


def _mark(out: Path) -> None:
    if not (out / MARKER).exists():
        write_json(out / MARKER, {"run_id": uuid.uuid4().hex, "created": time.time()})


INPUTS = "inputs.json"  # the fingerprint of every local input when the run started (training/files.py)


def input_fingerprints(cfg: HoneConfig, paths: dict[str, str] | None = None) -> dict[str, str]:
    paths = dict(_input_paths(cfg)) if paths is None else paths
    return {key: fingerprint(Path(value).expanduser()) for key, value in paths.items()}


def _input_changes(cfg: HoneConfig, out: Path) -> list[str]:
    """Inputs (data, model, reward code) that changed since the run started: a data file edited in
    place, or a model export an upstream stage wrote again. A run dir from before this record: none."""
    paths = dict(_input_paths(cfg))
    return [f"{key}: {paths.get(key, 'a file')} changed since the run started" for key in _changed_inputs(cfg, out, paths)]


def _changed_inputs(cfg: HoneConfig, out: Path, paths: dict[str, str]) -> list[str]:
    saved = read_json(out / INPUTS)
    if saved is None:
        return []
    now = input_fingerprints(cfg, paths)
    return sorted(key for key in saved.keys() | now.keys() if saved.get(key) != now.get(key))


def trained_on_an_older_model(cfg: HoneConfig) -> bool:
    """The run in cfg.output_dir is this config's, but the model it started from was written again since
    (its own config unchanged, its other inputs too). A pipeline replaces such a stage: its result is
    stale, and the stage is the pipeline's to redo."""
    out = Path(cfg.output_dir).expanduser().resolve()
    if not (out / MARKER).exists() or _saved_differences(cfg, out / "config.yaml", True):
        return False
    return _changed_inputs(cfg, out, dict(_input_paths(cfg))) == ["model.source"]


def _existing_state(cfg: HoneConfig, out: Path) -> str:
    """resume/finished for the same run (overwrite or not); replace for a different one that overwrite
    allows and that hone may delete; else an error that changes nothing."""
    marked = (out / MARKER).exists()
    diffs = _saved_differences(cfg, out / "config.yaml", marked)
    if diffs == []:
        diffs = _input_changes(cfg, out)
    if diffs == []:  # also a run from before the marker existed: it resumes, and is marked then
        return "finished" if (out / "summary.json").exists() else "resume"
    if not marked:
        raise RunDirError(
            f"output_dir {out} is not empty and holds no hone run (no {MARKER} marker); hone replaces only folders it "
            "made, even with overwrite=true: choose another output_dir, or empty this one yourself"
        )
    if not cfg.overwrite:
        shown = ", ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
        raise RunDirError(
            f"output_dir {out} holds a different run (config differs in: {shown}). Nothing was changed. "
            "Choose another output_dir, or set overwrite=true to replace that run"
        )
    _check_replaceable(cfg, out)
    return "replace"


def _saved_differences(cfg: HoneConfig, saved: Path, marked: bool) -> list[str]:
    """How the run saved in `saved` differs from `cfg`; ["config.yaml"] when there is no readable one."""
    try:
        old = yaml.safe_load(saved.read_text()) if saved.exists() else None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        if marked:
            raise RunDirError(
                f"{saved} is torn or not YAML ({err}); an interrupted write left it so. Nothing was changed"
            ) from None
        old = None
    if not isinstance(old, dict):
        return ["config.yaml"]
    return config_differences(old, to_dict(cfg))


def _check_replaceable(cfg: HoneConfig, out: Path) -> None:
    """overwrite=true deletes `out`, a folder hone made: never one that is also the root, home or working
    directory, nor one that holds what the run reads."""
    protected = {
        Path("/"): "the filesystem root",
        Path.home().resolve(): "your home directory",
        Path.cwd(): "the working directory",
    }
    if out in protected:
        raise RunDirError(f"output_dir {out} is {protected[out]}; overwrite=true never deletes it: choose a folder of its own")
    for key, value in _input_paths(cfg):
        if Path(value).expanduser().resolve().is_relative_to(out):
            raise RunDirError(
                f"output_dir {out} holds {key}={value}, which this run reads; overwrite=true would delete it: "
                "choose an output_dir that does not contain the run's inputs"
            )


def _input_paths(cfg: HoneConfig) -> list[tuple[str, str]]:
    """The local files and folders the run reads (data, model, reward modules): never inside what it deletes."""
    found: list[tuple[str, str]] = []

    def collect(key: str, value: Any, kind: PathKind, _: dict[str, Any]) -> Any:
        if kind in ("data", "model", "module") and isinstance(value, str) and value and Path(value).expanduser().exists():
            found.append((key, value))
        return value

    map_paths(to_dict(cfg), collect)
    return found


def lock_path(out: Path) -> Path:
    # Beside the run dir, not in it: replacing a run deletes the folder, and the lock must outlive that.
    return out.parent / f".{out.name}.hone-lock"


@contextlib.contextmanager
def run_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the run dir for the whole run. A second hone on the same output_dir (another terminal, a
    resubmitted job, a KubeRay retry while the old pod drains) fails at once naming the holder, before it
    reads or changes anything. flock is released by the kernel when the holder dies, so a lock never
    goes stale; on NFS it needs a lock daemon (most servers have one)."""
    out = Path(output_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirError(
            f"output_dir {out} is in use by {holder}; nothing was changed. Wait for that run to end (or stop it), then rerun"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"hone pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


STORAGE_RECORD = "storage.json"


def checkpoint_location(cfg: HoneConfig, run_dir: Path) -> tuple[str, str]:
    """Where Ray Train keeps this run's checkpoints: (storage_path, name) for its RunConfig.

    With scaling.storage_path unset that is run_dir/checkpoints. With it set, every run gets its own
    folder there, named once and recorded in the run dir: a resume finds the same folder, and a run
    that replaced another (overwrite=true) gets a fresh one instead of resuming the old run's state.
    """
    if not cfg.scaling.storage_path:
        return str(run_dir), "checkpoints"
    record = run_dir / STORAGE_RECORD
    if record.exists():
        saved = read_json(record)
        return saved["storage_path"], saved["name"]
    storage = cfg.scaling.storage_path
    storage = storage if "://" in storage else str(Path(storage).expanduser())
    name = f"{run_dir.name}-{uuid.uuid4().hex[:8]}"
    write_json(record, {"storage_path": storage, "name": name})
    return storage, name


def local_checkpoints(storage: str, name: str) -> Path | None:
    """The checkpoint folder when it is on a filesystem this process sees; None for s3:// / gs://."""
    return None if "://" in storage else Path(storage) / name


def _remove_checkpoints_elsewhere(run_dir: Path) -> None:
    # A replaced run's checkpoints under a filesystem storage_path would otherwise stay forever; in
    # object storage they are left (hone does not delete from buckets), and nothing will resume them.
    record = run_dir / STORAGE_RECORD
    if record.exists():
        saved = read_json(record)
        folder = local_checkpoints(saved["storage_path"], saved["name"])
        if folder is not None and folder.is_dir():
            shutil.rmtree(folder)


def remove_orphan_checkpoints(run_dir: Path, folder: Path | None = None) -> list[str]:
    """Delete checkpoint folders that are neither registered by Ray Train nor committed by hone: a run
    killed while saving leaves one. A complete one (COMMITTED) that Ray had not registered yet is kept;
    `newest_committed` finds it for the resume."""
    folder = folder or run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    registered = registered_checkpoints(folder)
    orphans = sorted(
        p.name for p in folder.glob("step_*") if p.is_dir() and p.name not in registered and not (p / COMMITTED).exists()
    )
    for name in orphans:
        shutil.rmtree(folder / name)
    if orphans:
        print(f"hone: removed unregistered (partial) checkpoints {', '.join(orphans)}", flush=True)
    return orphans


def registered_checkpoints(folder: Path) -> set[str]:
    """The checkpoint folder names Ray Train's snapshot in `folder` lists."""
    snapshot = folder / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return set()
    state = read_json(snapshot)
    results = state.get("checkpoint_results", []) + [state.get("latest_checkpoint_result") or {}]
    return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}


def newest_committed(folder: Path | None) -> str | None:
    """The newest complete checkpoint (COMMITTED) under `folder`; the worker loads it if it is newer than
    the one Ray Train registered."""
    if folder is None:
        return None
    done = sorted(p for p in folder.glob("step_*") if (p / COMMITTED).exists())
    return str(done[-1]) if done else None


# ----------------------------------------------------------------------------------------------------
# A run's result: summary.json and the before/after table every mode prints


def finish_run(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json (which marks the run finished) and print the table."""
    write_json(run_dir / "summary.json", summary, indent=2)
    if summary["eval"]["before"]:  # a synth run trains no model: it has nothing to compare
        print(format_table(summary))


def finished_run(run_dir: Path) -> dict[str, Any]:
    """A rerun of a finished run trains nothing: it shows the result again."""
    summary = read_json(run_dir / "summary.json")
    print(f"hone: {run_dir} already holds this finished run; delete that folder to train it again from scratch.")
    print(format_table(summary))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    lines = [f"\n{'held-out metric':<18}{'before':>12}{'after':>12}{'change':>12}"]
    for key in before:
        b, a = before[key], after.get(key, float("nan"))
        lines.append(f"{key:<18}{b:>12.4f}{a:>12.4f}{a - b:>+12.4f}")
    if summary.get("model_path"):
        lines.append(f"model: {summary['model_path']}")
    return "\n".join(lines)
