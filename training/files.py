"""Every file hone writes for a run goes through here: written whole or not at all, and read back with a
message that says what is wrong when an interrupted write (by an older hone, or a full disk) left it torn.

A plain `write_text` truncates first: a kill, a full disk or a lost node in the middle leaves half a
summary.json, which then blocked resuming and showing the run alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from hone.training.errors import HoneError


class TornFileError(HoneError):
    """A run file that does not parse: cut off by an interrupted write, or edited by hand."""


def write_text(path: Path, text: str) -> None:
    """Replace `path` atomically: a temp file in the same folder (so the rename stays on one filesystem),
    flushed and fsynced, then `os.replace`. A reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any, indent: int | None = None) -> None:
    write_text(path, json.dumps(value, indent=indent))


def read_json(path: Path) -> Any:
    """A JSON file a run wrote, or None where it has not been written (yet)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TornFileError(
            f"{path} is torn or not JSON ({err}): an interrupted write left it so. Delete it to have hone "
            "write it again (for eval_before.json, summary.json and the like the run recomputes it), or set "
            "overwrite=true to start the run again"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL file a run appends to (metrics.jsonl, exploits.jsonl), or [] where it has not started. A
    torn last line (the process was killed while appending it) is dropped with a warning; a torn line
    before the last is an error, since lines after it would be kept without it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: dropped its torn last line {number} (an interrupted append)", stacklevel=2)
                break
            raise TornFileError(f"{path}: line {number} of {len(lines)} is not JSON; fix or delete that line") from None
    return records


def fingerprint(path: Path) -> str:
    """What a local input is now: each file's relative path, size and modification time (a folder: every
    file in it). An edit in place, or a retrained model export (written anew and renamed), changes it.
    Contents are not hashed: a corpus of many GB would cost minutes on every start."""
    path = Path(path)
    files = files_in(path)
    parts = [f"{p.relative_to(path) if p != path else p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def files_in(path: Path, hidden: bool = True) -> list[Path]:
    """`path` itself if it is a file, else every file below it, sorted; `hidden=False` leaves out files
    inside dot-folders and dot-files (a hub download's .cache)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return files if hidden else [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
