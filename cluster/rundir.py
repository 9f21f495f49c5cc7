"""The run directory: claim it safely, and decide between a new run, a resume and a finished run.

A folder holding a different run is refused (and left untouched) unless `overwrite=true` is set.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from hone.training.config import HoneConfig, to_dict, to_yaml
from hone.training.errors import HoneError

# Settings that may change between a run and its resume without making it a different run.
RESUMABLE_CHANGES = {"overwrite", "scaling.placement_timeout_s", "scaling.max_failures"}


def read_json(path: Path) -> Any:
    """A JSON file a run wrote, or None where it has not been written (yet)."""
    return json.loads(path.read_text()) if path.exists() else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL file a run appends to (metrics.jsonl, exploits.jsonl), or [] where it has not started."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class RunDirError(HoneError, RuntimeError):
    """The output dir cannot be used for this run; nothing in it was changed."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
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
    a, b = _flatten(old), _flatten(new)
    keys = a.keys() | b.keys()
    return sorted(k for k in keys if k not in RESUMABLE_CHANGES and _session_free(a.get(k)) != _session_free(b.get(k)))


def inspect(cfg: HoneConfig) -> tuple[Path, str]:
    """Read-only: the run dir and what claiming it would mean ("new", "replace", "resume", "finished").
    Raises RunDirError for a dir that must not be used."""
    out = Path(cfg.output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file; point output_dir at a folder")
    if out.exists() and any(out.iterdir()):
        return out, _existing_state(cfg, out) or "replace"
    return out, "new"


def claim(cfg: HoneConfig) -> tuple[Path, str]:
    """Take the run dir: returns it and its state, "new", "resume" or "finished"."""
    out, state = inspect(cfg)
    if state in ("resume", "finished"):
        return out, state
    if state == "replace":
        _remove_checkpoints_elsewhere(out)
        shutil.rmtree(out)
        print(f"hone: overwrite=true, removed the earlier run in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    return out, "new"


def _existing_state(cfg: HoneConfig, out: Path) -> str | None:
    """resume/finished for the same run; None when overwrite allows replacing it; else an error."""
    saved = out / "config.yaml"
    if cfg.overwrite:
        return None
    if not saved.exists():
        raise RunDirError(
            f"output_dir {out} is not empty and holds no hone run; choose another output_dir, or set overwrite=true to replace its contents"
        )
    diffs = config_differences(yaml.safe_load(saved.read_text()) or {}, to_dict(cfg))
    if diffs:
        shown = ", ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
        raise RunDirError(
            f"output_dir {out} holds a different run (config differs in: {shown}). Nothing was changed. "
            "Choose another output_dir, or set overwrite=true to replace that run"
        )
    return "finished" if (out / "summary.json").exists() else "resume"


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
        saved = json.loads(record.read_text())
        return saved["storage_path"], saved["name"]
    storage = cfg.scaling.storage_path
    storage = storage if "://" in storage else str(Path(storage).expanduser())
    name = f"{run_dir.name}-{uuid.uuid4().hex[:8]}"
    record.write_text(json.dumps({"storage_path": storage, "name": name}))
    return storage, name


def local_checkpoints(storage: str, name: str) -> Path | None:
    """The checkpoint folder when it is on a filesystem this process sees; None for s3:// / gs://."""
    return None if "://" in storage else Path(storage) / name


def _remove_checkpoints_elsewhere(run_dir: Path) -> None:
    # A replaced run's checkpoints under a filesystem storage_path would otherwise stay forever; in
    # object storage they are left (hone does not delete from buckets), and nothing will resume them.
    record = run_dir / STORAGE_RECORD
    if record.exists():
        saved = json.loads(record.read_text())
        folder = local_checkpoints(saved["storage_path"], saved["name"])
        if folder is not None and folder.is_dir():
            shutil.rmtree(folder)


def remove_orphan_checkpoints(run_dir: Path, folder: Path | None = None) -> list[str]:
    """Delete checkpoint folders Ray Train never registered (a run killed while saving leaves one).

    Ray Train resumes only from registered checkpoints, listed in its snapshot; anything else under
    `folder` (default run_dir/checkpoints) is a partial write that would only waste disk and confuse a
    reader.
    """
    folder = folder or run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    snapshot = folder / "checkpoint_manager_snapshot.json"
    registered: set[str] = set()
    if snapshot.exists():
        state = json.loads(snapshot.read_text())
        results = state.get("checkpoint_results", []) + [state.get("latest_checkpoint_result") or {}]
        registered = {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}
    orphans = sorted(p.name for p in folder.glob("step_*") if p.is_dir() and p.name not in registered)
    for name in orphans:
        shutil.rmtree(folder / name)
    if orphans:
        print(f"hone: removed unregistered (partial) checkpoints {', '.join(orphans)}", flush=True)
    return orphans


# ----------------------------------------------------------------------------------------------------
# A run's result: summary.json and the before/after table every mode prints


def finish_run(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json (which marks the run finished) and print the table."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))


def finished_run(run_dir: Path) -> dict[str, Any]:
    """A rerun of a finished run trains nothing: it shows the result again."""
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"hone: {run_dir} already holds this finished run; set overwrite=true to train again.")
    print(format_table(summary))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    lines = [f"\n{'held-out metric':<18}{'before':>12}{'after':>12}{'change':>12}"]
    for key in before:
        b, a = before[key], after.get(key, float("nan"))
        lines.append(f"{key:<18}{b:>12.4f}{a:>12.4f}{a - b:>+12.4f}")
    lines.append(f"model: {summary['model_path']}")
    return "\n".join(lines)
