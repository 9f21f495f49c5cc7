"""train.gradient_checkpointing and model.attn_implementation trade memory and speed, never the math:
the same run takes the same steps with either (issue 15)."""

from __future__ import annotations

import pytest

from hone.cluster.run import run
from hone.training.config import ConfigError, load_config
from hone.training.files import read_jsonl
from tests.conftest import sft_overrides


def _run(assets, out, *extra: str) -> tuple[list[float], dict]:
    summary = run(load_config(None, sft_overrides(assets, out, "train.max_steps=4", "eval.max_samples=2", *extra)))
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl")], summary["workers"][0]


@pytest.mark.slow
def test_checkpointed_and_eager_attention_runs_take_the_same_steps(assets, tmp_path, local_ray):
    plain, worker = _run(assets, tmp_path / "plain")
    assert not worker["gradient_checkpointing"] and worker["attn_implementation"] == "sdpa"
    checkpointed, worker = _run(assets, tmp_path / "ckpt", "train.gradient_checkpointing=true")
    assert worker["gradient_checkpointing"] and checkpointed == pytest.approx(plain, rel=1e-6)
    lora, worker = _run(assets, tmp_path / "lora", "train.gradient_checkpointing=true", "lora.enabled=true")
    assert worker["gradient_checkpointing"] and lora[-1] < lora[0]  # frozen embeddings: the adapter still learns
    eager, worker = _run(assets, tmp_path / "eager", "model.attn_implementation=eager")
    assert worker["attn_implementation"] == "eager" and eager == pytest.approx(plain, rel=1e-5)


def test_flash_attention_is_refused_without_a_gpu_or_with_shared_prefixes(assets, tmp_path):
    base = sft_overrides(assets, tmp_path / "run", "model.attn_implementation=flash_attention_2")
    with pytest.raises(ConfigError, match="model.attn_implementation.*GPUs only"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="share_prefix=false"):
        load_config(None, [*base, "scaling.use_gpu=true"])
    load_config(None, [*base, "scaling.use_gpu=true", "data.share_prefix=false"])
