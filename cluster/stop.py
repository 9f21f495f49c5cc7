"""Stopping a run on purpose: Ctrl-C, or the SIGTERM that Kubernetes, Slurm and spot reclaims send.

The first signal asks the run to stop at the next step boundary after saving a checkpoint; hone then
exits with one line (status 130 for Ctrl-C, 143 for SIGTERM) and rerunning the same command resumes
from that checkpoint. A second signal stops at once (the last periodic checkpoint is what remains).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from hone.training.errors import HoneError

STOP = threading.Event()  # set by the first signal; the run checks it between steps
_received: dict[str, int] = {}
_active: list[bool] = []


class RunInterrupted(HoneError):
    """The run stopped because it was asked to; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def stop_requested() -> bool:
    return STOP.is_set()


def interrupted(step: int) -> RunInterrupted:
    """The error a run raises once it stopped as asked, at `step`, with its checkpoint saved."""
    name = next(iter(_received), "SIGTERM")
    return RunInterrupted(
        f"stopped by {name} at step {step}, with a checkpoint of that step saved; rerun the same command to resume",
        128 + _received.get(name, signal.SIGTERM),
    )


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if STOP.is_set():  # the second signal: stop now
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt
    _received[name] = signum
    STOP.set()
    print(f"\nhone: {name}: saving a checkpoint at the next step, then stopping (again to stop at once)", flush=True)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Route SIGINT and SIGTERM to the run for the duration (main thread only; Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        STOP.clear()
        _received.clear()


def reinstall() -> None:
    """ray.init replaces the SIGTERM handler with one that exits at once; put hone's back after it."""
    if _active and threading.current_thread() is threading.main_thread() and not STOP.is_set():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _handler)
