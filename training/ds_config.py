"""The DeepSpeed JSON, generated from the typed config. This function owns the batch-size arithmetic:

global_batch = micro_batch_per_device * grad_accum * world_size
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from hone.training.config import HoneConfig


def import_deepspeed(use_gpu: bool) -> None:
    """Import DeepSpeed in a worker, first thing: its accelerator is chosen at import (DS_ACCELERATOR=cpu
    without a GPU), and its autotuner, which hone never runs, imports MLflow when it is installed (hone's
    MLflow tracking installs it): ~0.9 s of every training and evaluation worker's start. MLflow is hidden
    while DeepSpeed imports, so the autotuner records it as absent; `import mlflow` works as before after."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "deepspeed" in sys.modules:
        return
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # makes `import mlflow` raise ImportError
    try:
        import deepspeed  # noqa: F401
    finally:
        if hide:
            del sys.modules["mlflow"]


def global_batch(cfg: HoneConfig) -> int:
    return cfg.train.micro_batch_per_device * cfg.train.grad_accum * cfg.scaling.num_workers


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    # The last partial global batch of an epoch is dropped so every step has the same size.
    return num_examples // global_batch


def resolve_precision(cfg: HoneConfig, gpu_supports_bf16: bool) -> str:
    """auto: bf16 on GPUs that have it, fp32 on CPU. bf16 asked for on CPU is autocast (`cpu_autocast`):
    DeepSpeed's own bf16 mode keeps bf16 weights and was no faster there."""
    if cfg.deepspeed.precision != "auto":
        return cfg.deepspeed.precision
    return "bf16" if cfg.scaling.use_gpu and gpu_supports_bf16 else "fp32"


# Elements per gradient-reduce and all-gather bucket (ZeRO 1-3). DeepSpeed's default, 5e8, is a 2 GB fp32
# buffer that ZeRO-3 allocates on every rank whatever the model's size; 5e7 still fills a fast link.
BUCKET_ELEMENTS = 50_000_000


def deepspeed_config(cfg: HoneConfig, precision: str) -> dict[str, Any]:
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero["reduce_bucket_size"] = zero["allgather_bucket_size"] = BUCKET_ELEMENTS
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.param_persistence_threshold
        live = ds.max_live_parameters or (1_000_000_000 if cfg.scaling.use_gpu else 100_000_000)
        zero["stage3_max_live_parameters"] = zero["stage3_max_reuse_distance"] = live
        zero["stage3_prefetch_bucket_size"] = min(BUCKET_ELEMENTS, live)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_per_device,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": global_batch(cfg),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16" and cfg.scaling.use_gpu},  # on CPU: cpu_autocast
        "fp16": {"enabled": precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": 1e-8,
                "weight_decay": cfg.optim.weight_decay,
                # DeepSpeed's fused Adam JIT-compiles a native op with gcc (~80 s); torch's AdamW is
                # as fast on CPU. On GPU the fused kernel is worth it.
                "torch_adam": not cfg.scaling.use_gpu,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def engine_config(cfg: HoneConfig) -> dict[str, Any]:
    """The DeepSpeed JSON of this process's engine: the precision resolved against the GPU it has."""
    import torch

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return deepspeed_config(cfg, resolve_precision(cfg, gpu_bf16))


def inference_config(cfg: HoneConfig) -> dict[str, Any]:
    """The DeepSpeed JSON of an engine that only runs forward passes (the sharded evaluation): the
    training engine's partitioning and precision, no optimizer."""
    ds = engine_config(cfg)
    del ds["optimizer"]
    return ds


def initialize_inference(model: Any, cfg: HoneConfig, ds_config: dict[str, Any]) -> Any:
    """A DeepSpeed engine for `model` without an optimizer. Under ZeRO-3 it installs the hooks that gather
    each layer's parameters for its forward pass and free them after."""
    import deepspeed

    skip_cpu_inference_comm_op()
    _new_groups_time_out_after(cfg.scaling.collective_timeout_s)
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds_config)
    return engine


def load_dtype(ds_config: dict[str, Any]) -> Any:
    """The dtype to load the model in: the one the engine trains in (bf16 or fp16 weights on GPU), else fp32.
    Loading straight in it means no process ever holds an fp32 copy of a bf16 model (on CPU, bf16 is
    autocast over fp32 weights, so CPU stays fp32)."""
    import torch

    if ds_config["bf16"]["enabled"]:
        return torch.bfloat16
    return torch.float16 if ds_config["fp16"]["enabled"] else torch.float32


def initialize_engine(model: Any, cfg: HoneConfig, total_steps: int) -> Any:
    """The DeepSpeed engine for `model` with hone's optimizer, precision and LR schedule (warmup then
    cfg.optim.decay over total_steps). `cfg.train` sets the micro-batch and accumulation arithmetic."""
    import deepspeed
    import torch

    from hone.training.losses import lr_multiplier

    ds_config = engine_config(cfg)
    opt = cfg.optim

    def schedule(optimizer: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, opt.warmup_steps, total_steps, opt.decay, opt.min_lr_ratio)
        )

    params = [p for p in model.parameters() if p.requires_grad]
    skip_cpu_inference_comm_op()
    _new_groups_time_out_after(cfg.scaling.collective_timeout_s)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config, lr_scheduler=schedule)
    return engine


def _new_groups_time_out_after(seconds: float) -> None:
    """Make scaling.collective_timeout_s hold for DeepSpeed's own process groups too.

    DeepSpeed runs its gradient all-reduces on a clone of the world group (`new_group` without a timeout),
    and torch gives such a group its module default, 30 minutes (10 for NCCL), whatever the world group
    was given. A stuck rank would then hang the others for that long. torch has no public setter for the
    default, so its module attribute is set, before DeepSpeed makes the clone."""
    import datetime

    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = datetime.timedelta(seconds=seconds)
    if c10d.default_pg_nccl_timeout is not None:
        c10d.default_pg_nccl_timeout = datetime.timedelta(seconds=seconds)


def skip_cpu_inference_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op.

    That op serves only `inference_all_reduce`, which training never calls. Loading it takes a file lock
    under ~/.cache/torch_extensions in every process, even when it is already built; a process killed
    while holding it (a stopped job, a Ray worker shut down mid-build) leaves the lock behind, and every
    later run on that machine then waits on it forever inside `deepspeed.initialize`.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@functools.cache  # asked at every training step (cpu_autocast); the CPU does not change
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 through oneDNN (AVX-512 or AMX). Without it (AVX2-only CPUs: many AMD
    and older Intel machines) torch takes a slow fallback: a 512x576 by 576x1536 matmul took 777 ms in bf16
    against 8.9 ms in fp32 on an AVX2-only EPYC, and the quickstart's pretraining 140 s a step, not 2.5 s."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_autocast(cfg: HoneConfig) -> Any:
    """deepspeed.precision=bf16 on CPU: the forward pass autocasts matmuls to bf16 (AMX or AVX-512 BF16 run
    them several times faster than fp32) while weights, gradients and optimizer state stay fp32; softmax,
    the loss and norms stay fp32 too, as torch's autocast lists keep them. bench/cpu_step.py, SmolLM2-135M
    with LoRA on 2 cores: 0.78x the step time of fp32. On a CPU without fast bf16, and on GPUs, a no-op."""
    import torch

    enabled = cfg.deepspeed.precision == "bf16" and not cfg.scaling.use_gpu
    if enabled and not cpu_bf16_is_fast():
        _say_bf16_is_off()
        enabled = False
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@functools.cache
def _say_bf16_is_off() -> None:
    print("hone: deepspeed.precision=bf16 runs in fp32 on this CPU: it has no fast bf16 (AVX-512 or AMX)", flush=True)
