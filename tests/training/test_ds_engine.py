"""DeepSpeed engine start-up on CPU must not depend on the torch-extensions cache's state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import make_causal_model

pytestmark = pytest.mark.slow  # a DeepSpeed engine in a subprocess

ROOT = Path(__file__).resolve().parents[2]

# One process, world size 1: the same `initialize_engine` every Train worker and RL policy actor calls.
START_ENGINE = """
import sys
from transformers import AutoModelForCausalLM
from hone.training.config import from_dict
from hone.training.ds_config import initialize_engine

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
engine = initialize_engine(model, from_dict({"model": {"source": sys.argv[1]}, "data": {"train": [sys.argv[1]]}}), total_steps=4)
print("engine ready", type(engine).__name__)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lock_left_by_a_killed_process_does_not_hang_engine_start(tmp_path):
    # A process killed while loading DeepSpeed's CPU shared-memory op leaves this lock; torch then waits
    # for it to vanish, forever. hone never loads that op (training does not use it), so start-up goes on.
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.touch()
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(extensions),
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "PYTHONPATH": str(ROOT),
    }
    model = make_causal_model(tmp_path / "llama")
    done = subprocess.run(
        [sys.executable, "-c", START_ENGINE, str(model)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine ready DeepSpeedEngine" in done.stdout
    assert lock.exists() and sorted(p.name for p in (extensions / "deepspeed_shm_comm").iterdir()) == ["lock"]
