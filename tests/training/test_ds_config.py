"""The DeepSpeed JSON hone generates: the settings that decide how much memory ZeRO saves (issue 15)."""

from __future__ import annotations

import torch

from hone.training.config import from_dict
from hone.training.ds_config import BUCKET_ELEMENTS, deepspeed_config, load_dtype


def _config(**deepspeed: object) -> dict:
    cfg = from_dict({"model": {"source": "m"}, "data": {"train": ["d"]}, "deepspeed": deepspeed})
    return deepspeed_config(cfg, "fp32")


def test_zero3_releases_gathered_layers_on_cpu_and_keeps_deepspeeds_prefetch_on_gpu():
    zero = _config(zero_stage=3)["zero_optimization"]
    # DeepSpeed's 1e9 would keep any model under ~1B parameters gathered through the whole step.
    assert zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == 100_000_000
    assert zero["reduce_bucket_size"] == BUCKET_ELEMENTS < 500_000_000  # not DeepSpeed's 2 GB fp32 buffer
    gpu = from_dict({"model": {"source": "m"}, "data": {"train": ["d"]}, "deepspeed": {"zero_stage": 3},
                     "scaling": {"use_gpu": True}})  # fmt: skip
    assert deepspeed_config(gpu, "bf16")["zero_optimization"]["stage3_max_live_parameters"] == 1_000_000_000
    assert _config(zero_stage=3, max_live_parameters=5)["zero_optimization"]["stage3_max_live_parameters"] == 5
    assert "reduce_bucket_size" not in _config(zero_stage=0)["zero_optimization"]


def test_the_model_loads_in_the_dtype_the_engine_trains_in():
    assert load_dtype(_config()) is torch.float32  # CPU: bf16 is autocast over fp32 weights
    gpu = from_dict({"model": {"source": "m"}, "data": {"train": ["d"]}, "scaling": {"use_gpu": True}})
    assert load_dtype(deepspeed_config(gpu, "bf16")) is torch.bfloat16
    assert load_dtype(deepspeed_config(gpu, "fp16")) is torch.float16


def test_deepspeed_is_imported_without_mlflow_which_imports_as_before_after():
    """DeepSpeed's autotuner imports MLflow (~0.9 s of every worker's start) when it is installed."""
    import subprocess
    import sys

    code = (
        "import sys; from hone.training.ds_config import import_deepspeed; import_deepspeed(False); "
        "print('deepspeed' in sys.modules, 'mlflow' in sys.modules); import mlflow; print(mlflow.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "mlflow"]
