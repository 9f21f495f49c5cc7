"""The run directory: claim it safely, and decide between a new run, a resume and a finished run.

A folder holding a different run is refused (and left untouched) unless `overwrite=true` is set.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from training.config import HoneConfig, to_dict, to_yaml

# Settings that may change between a run and its resume without making it a different run.
RESUMABLE_CHANGES = {"overwrite", "scaling.placement_timeout_s", "scaling.max_failures"}


class RunDirError(RuntimeError):
    """The output dir cannot be used for this run; nothing in it was changed."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))


def claim(cfg: HoneConfig) -> tuple[Path, str]:
    """Return the run dir and its state: "new", "resume" or "finished"."""
    out = Path(cfg.output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file; point output_dir at a folder")
    if out.exists() and any(out.iterdir()):
        state = _existing_state(cfg, out)
        if state is not None:
            return out, state
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
