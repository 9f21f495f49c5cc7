"""The run's `model/`: a Hugging Face directory that plain transformers loads with no hone code.

ZeRO-3 weights are gathered from every rank first. LoRA runs save the adapter in `model/adapter/` and
the merged full weights in `model/`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hone.training.config import HoneConfig


def full_state_dict(engine: Any, zero_stage: int, rank: int) -> dict[str, Any] | None:
    """The whole model's weights on rank 0 (None elsewhere). Every rank must call this under ZeRO-3."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return _cpu_copy(module) if rank == 0 else None
    return _cpu_copy(module) if rank == 0 else None


def _cpu_copy(module: Any) -> dict[str, Any]:
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def export_model(engine: Any, cfg: HoneConfig, resolved: str, kind: str, out: Path, tokenizer: Any, rank: int) -> None:
    """Every rank calls this; rank 0 writes `out` (the run's model/) from the base model `resolved`."""
    import torch.distributed as dist

    state = full_state_dict(engine, cfg.deepspeed.zero_stage, rank)
    if rank == 0:
        assert state is not None
        write_model_dir(state, cfg, resolved, kind, tokenizer, out)
    dist.barrier()


def write_model_dir(state: dict[str, Any], cfg: HoneConfig, resolved: str, kind: str, tokenizer: Any, out: Path) -> None:
    """Load the trained weights into a fresh copy of the base model and save it, atomically."""
    from hone.training.models import add_lora, load_model

    model = load_model(cfg.model, resolved, kind)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.lora.enabled:
        model = add_lora(model, cfg.lora, kind)
        model.load_state_dict(state)
        model.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    else:
        model.load_state_dict(state)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
