"""Killing a hone run in a test as a power cut would: every process it started, at once.

Ray starts each worker in a process group of its own (the raylet's children call setpgid), so killing
the driver's process group leaves the workers running for a moment after the driver is gone; one can
still finish and commit a checkpoint. Everything a run starts stays in the driver's session, so the
session is what is killed. The driver must have been started with `start_new_session=True`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> None:
    """Send `sig` to every process of session `sid`; with SIGKILL, return once none is left."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    if sig != signal.SIGKILL:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pids: list[int]) -> bool:
    """Any of `pids` not yet a zombie (a zombie has stopped running; its parent reaps it later)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return False
