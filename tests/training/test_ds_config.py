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


def test_bf16_on_a_cpu_without_fast_bf16_runs_in_fp32(tmp_path, capsys):
    """Without AVX-512 or AMX, torch's bf16 matmul is a slow fallback (~90x fp32's time on an AVX2-only
    EPYC): bf16 autocast and bf16 generation are used only where the CPU has it."""
    from hone.training.ds_config import _say_bf16_is_off, cpu_autocast, cpu_bf16_is_fast
    from hone.training.generation import HfEngine
    from tests.tiny import make_causal_model

    _say_bf16_is_off.cache_clear()  # said once per process

    fast = cpu_bf16_is_fast()
    assert fast == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    bf16 = from_dict({"model": {"source": "m"}, "data": {"train": ["d"]}, "deepspeed": {"precision": "bf16"}})
    with cpu_autocast(bf16):
        assert torch.is_autocast_enabled("cpu") is fast
    assert ("runs in fp32 on this CPU" in capsys.readouterr().out) is not fast
    engine = HfEngine.load(str(make_causal_model(tmp_path / "llama")), dtype="bfloat16")
    assert next(engine.model.parameters()).dtype is (torch.bfloat16 if fast else torch.float32)
