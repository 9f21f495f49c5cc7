"""A model loaded only sharded (ZeRO-3, two workers) trains, is evaluated and exported; `model/` keeps the
base checkpoint's dtype (bf16 here, trained in fp32 on CPU) in safetensors that plain transformers loads
(issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone.cluster.run import run
from hone.training.config import load_config
from tests.conftest import sft_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_base(assets, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("bf16") / "llama"
    AutoModelForCausalLM.from_pretrained(assets["llama"], dtype=torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(assets["llama"]).save_pretrained(path)
    return path


def _safetensors_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    return dtypes


def _train(assets, base: Path, out: Path, *extra: str) -> dict:
    overrides = sft_overrides(
        assets, out, f"model.source={base}", "deepspeed.zero_stage=3", "scaling.num_workers=2",
        "train.max_steps=6", "train.micro_batch_per_device=4", "eval.max_samples=4", *extra,
    )  # fmt: skip
    return run(load_config(None, overrides))


@pytest.mark.parametrize("lora", [False, True])
def test_a_zero3_run_exports_the_base_dtype(assets, bf16_base, tmp_path, local_ray, lora):
    import torch
    from transformers import AutoModelForCausalLM

    summary = _train(assets, bf16_base, tmp_path / "run", f"lora.enabled={str(lora).lower()}")
    assert all(w["zero_stage"] == 3 for w in summary["workers"])
    assert summary["eval"]["after"]["loss"] < summary["eval"]["before"]["loss"]  # evaluated, and it learned

    model_dir = tmp_path / "run" / "model"
    assert _safetensors_dtypes(model_dir) == {"BF16"}
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    if lora:
        assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    tuned = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    base = AutoModelForCausalLM.from_pretrained(bf16_base, dtype="auto")
    assert tuned.dtype == torch.bfloat16
    changed = [n for (n, p), q in zip(tuned.named_parameters(), base.parameters(), strict=True) if not torch.equal(p, q)]
    if lora:  # the merged adapter moved the projections it targets, and nothing else
        assert changed and all("proj" in n for n in changed)
    else:
        assert len(changed) > len(list(base.parameters())) // 2
