"""What a run pays before and after its training steps: hone's start-up settings against the old way, in one
run on one machine.

1. A worker's DeepSpeed import (after torch and transformers, as a training worker does it), in fresh
   processes: plain `import deepspeed` (its autotuner imports MLflow, which hone installs) against
   `import_deepspeed()` (MLflow hidden while DeepSpeed imports).
2. A whole 3-step sft run of a tiny model on one connected local cluster (the tests' setting), the wall time
   of `hone run` from start to summary: Ray Train's defaults as hone used them (health check every 2 s, the
   plan handed to the controller by value, so it imports hone's training code) against hone's (0.5 s, by
   reference). Both include the base and tuned evaluations and the export.

    .venv/bin/python bench/run_start.py [--rounds 5]

Variants alternate round by round; medians and ratios are printed. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER_IMPORTS = "import torch, transformers, transformers.modeling_utils; "
IMPORTS = {
    "import deepspeed (MLflow too)": "import deepspeed",
    "import_deepspeed() (MLflow hidden)": "from hone.training.ds_config import import_deepspeed; import_deepspeed(False)",
}


def import_seconds(statement: str) -> float:
    """Seconds `statement` takes in a fresh interpreter that has already imported what a worker has."""
    code = f"{WORKER_IMPORTS}import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)


def run_variants(rounds: int) -> dict[str, list[float]]:
    import ray

    import hone.cluster.train_run as train_run
    from hone.cluster.cli import main
    from hone.cluster.connect import HEALTH_CHECK_INTERVAL
    from hone.training.handoff import by_reference
    from tests.conftest import sft_overrides
    from tests.tiny import copy_rows, make_causal_model, write_jsonl

    def by_value(loop_config: dict[str, Any]) -> dict[str, Any]:
        # The old way: the plan travels in the controller's arguments (and is unpickled there); the workers
        # still read it through the reference, so nothing else differs.
        return {**by_reference(loop_config), "by_value": loop_config}

    variants: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        "Ray Train's defaults (2 s checks, plan by value)": ("2", by_value),
        "hone (0.5 s checks, plan by reference)": ("0.5", by_reference),
    }
    root = Path(tempfile.mkdtemp(prefix="hone-run-start-"))
    assets = {"llama": make_causal_model(root / "llama"), "copy": write_jsonl(root / "copy.jsonl", copy_rows(240))}
    (root / "run.yaml").write_text("{}\n")
    ray.init(address="local", num_cpus=4, logging_level="WARNING", include_dashboard=False)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for i in range(rounds + 1):  # round 0 warms the cluster's pooled workers, not timed
            for name, (interval, handoff) in variants.items():
                os.environ[HEALTH_CHECK_INTERVAL] = interval
                train_run.by_reference = handoff  # type: ignore[assignment]
                out = root / f"run-{i}-{len(walls[name])}-{interval}"
                started = time.perf_counter()
                assert main(["run", str(root / "run.yaml"), *sft_overrides(assets, out, "train.max_steps=3")]) == 0
                if i:
                    walls[name].append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    return walls


def report(title: str, results: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    medians = {name: statistics.median(values) for name, values in results.items()}
    baseline = next(iter(medians.values()))
    for name, median in medians.items():
        spread = ", ".join(f"{v:.2f}" for v in results[name])
        print(f"  {name:50s} median {median:6.2f} s  ({spread})  {baseline / median:.2f}x the first")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    imports: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(args.rounds):
        for name, statement in IMPORTS.items():
            imports[name].append(import_seconds(statement))
    report("A worker's DeepSpeed import (fresh processes, after torch and transformers)", imports)
    report("A 3-step tiny sft run on a connected local cluster, wall seconds", run_variants(args.rounds))


if __name__ == "__main__":
    main()
