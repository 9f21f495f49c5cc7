"""Per-step metrics from rank 0 to the driver, across nodes: a small Ray actor the workers push to and
the driver polls. The driver writes metrics.jsonl and draws the progress bar."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from hone.training.files import read_jsonl, write_text

REPLAYED = "_replayed"  # marks a record the resumed worker sent again from its checkpoint


@ray.remote(num_cpus=0)
class RunLog:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.workers: dict[int, dict[str, Any]] = {}
        self.stop = False

    def request_stop(self) -> None:
        """The driver was asked to stop (SIGTERM, Ctrl-C): rank 0 reads this between steps."""
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop

    def record(self, metrics: dict[str, Any]) -> None:
        self.records.append(metrics)

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Steps a resumed checkpoint carries: the driver adds those its metrics.jsonl lacks."""
        self.records.extend({**r, REPLAYED: True} for r in records)

    def worker(self, info: dict[str, Any]) -> None:
        self.workers[info["rank"]] = info

    def take(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out

    def worker_info(self) -> list[dict[str, Any]]:
        return [self.workers[r] for r in sorted(self.workers)]


class MetricsFile:
    """metrics.jsonl, one line per step. A step logged again (a worker group restarted from an earlier
    checkpoint) replaces that step and everything after it, so the file never double-counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = read_jsonl(path)

    def keep_until(self, step: int) -> None:
        if any(r["step"] > step for r in self.lines):
            self.lines = [r for r in self.lines if r["step"] <= step]
            self._rewrite()

    def add(self, record: dict[str, Any]) -> bool:
        """Append `record`; False where it is a replayed step the file already holds (nothing written)."""
        if record.pop(REPLAYED, False) and any(r["step"] == record["step"] for r in self.lines):
            return False
        if self.lines and record["step"] <= self.lines[-1]["step"]:
            self.keep_until(record["step"] - 1)
        self.lines.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return True

    def _rewrite(self) -> None:
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.lines))


def follow(
    log: Any,
    metrics: MetricsFile,
    total_steps: int,
    done: threading.Event,
    on_record: Callable[[dict], None],
    errors: list[BaseException],
) -> None:
    """Drain the actor into metrics.jsonl, `on_record` (W&B) and a tqdm bar (step/total, loss, tokens/s,
    ETA) until `done`. A failure to write (a full disk, a W&B error) is put in `errors` and the run is
    asked to stop, so it ends with that error and a checkpoint instead of training on unlogged."""
    from tqdm import tqdm

    start = metrics.lines[-1]["step"] if metrics.lines else 0
    with tqdm(total=total_steps, initial=start, desc="training", unit="step", dynamic_ncols=True) as bar:
        while True:
            finished = done.is_set()
            try:
                records = ray.get(log.take.remote())
                for record in records:
                    record["time"] = time.time()
                    if metrics.add(record):
                        on_record(record)
            except Exception as err:
                if not errors:
                    errors.append(err)
                    log.request_stop.remote()
                if finished:
                    return
                done.wait(0.5)
                continue
            for record in records:
                bar.n = record["step"]
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                bar.refresh()
            if finished:
                return
            done.wait(0.5)
