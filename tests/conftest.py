"""Shared fixtures: tiny models and data written to temp dirs, and a Ray cluster per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hone.cluster.connect import own_state_api
from tests.tiny import copy_rows, make_causal_model, make_masked_model, text_rows, write_jsonl

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    return {
        "llama": make_causal_model(root / "llama"),
        "bert": make_masked_model(root / "bert"),
        "copy": write_jsonl(root / "copy.jsonl", copy_rows(240)),
        "text": write_jsonl(root / "text.jsonl", text_rows(160)),
    }


def sft_overrides(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """A tiny sft run that learns in a few dozen CPU steps."""
    return [
        "mode=sft",
        f"output_dir={out}",
        f"model.source={assets['llama']}",
        f"data.train=[{assets['copy']}]",
        "data.max_seq_len=32",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "train.max_steps=20",
        "train.micro_batch_per_device=8",
        "eval.max_new_tokens=6",
        "eval.max_samples=16",
        *extra,
    ]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray cluster for a module's runs (hone reuses a connected Ray instead of starting one)."""
    import ray

    temp = tmp_path_factory.mktemp("ray")
    with own_state_api() as port:  # its state API, not another cluster's on this machine
        ray.init(
            address="local", num_cpus=4, include_dashboard=True, dashboard_port=port, _temp_dir=str(temp), logging_level="WARNING"
        )
        yield
        ray.shutdown()
