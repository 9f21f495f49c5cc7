"""The run's `model/`: a Hugging Face directory that plain transformers loads with no hone code.

It keeps the base model's dtype (a bf16 model is exported in bf16, not in the fp32 it may have trained
in) and is written as sharded safetensors. Under ZeRO-3 the weights are gathered a chunk at a time, so no
rank ever holds the whole model unpartitioned: rank 0 collects the chunks in the base dtype. LoRA runs
gather only the adapter, save it in `model/adapter/`, and the merged full weights in `model/`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hone.training.config import HoneConfig

# How much of the model one gather brings together (in fp32 bytes; a larger parameter goes alone). Every
# rank holds one chunk whole while it is gathered, on top of its own partition.
GATHER_CHUNK_BYTES = 256 << 20
# Files of model/ stay at most this large (transformers' sharded-safetensors layout with an index).
MAX_SHARD_SIZE = "5GB"


def gathered_chunks(module: Any, zero_stage: int, rank: int, adapter_only: bool, dtype: Any) -> Iterator[dict[str, Any]]:
    """The model's trained weights as CPU tensors of `dtype`, in chunks of about GATHER_CHUNK_BYTES: rank 0
    yields them, the other ranks yield nothing but must iterate too (under ZeRO-3 each chunk is a
    collective gather). adapter_only: the trainable weights of a peft model (its adapter and any modules it
    trains whole), keyed as peft saves them."""
    import torch

    if adapter_only:
        from peft import get_peft_model_state_dict

        groups = [[p for p in module.parameters() if p.requires_grad]]
        grab: Any = lambda _: get_peft_model_state_dict(module)  # noqa: E731
    else:
        named = list(module.named_parameters())
        groups = [[p for _, p in part] for part in _by_size(named, GATHER_CHUNK_BYTES)]
        names = {id(p): n for n, p in named}
        grab = lambda params: {names[id(p)]: p for p in params}  # noqa: E731
    for params in groups:
        if zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                chunk = _detached(grab(params), dtype) if rank == 0 else None
        else:
            with torch.no_grad():
                chunk = _detached(grab(params), dtype) if rank == 0 else None
        if chunk is not None:
            yield chunk


def _by_size(named: list[tuple[str, Any]], limit: int) -> list[list[tuple[str, Any]]]:
    """Consecutive parameters in groups of at most `limit` bytes in fp32 (a larger parameter alone). Under
    ZeRO-3 a parameter's local tensor is a shard: its full size is `ds_numel`."""
    groups: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for name, p in named:
        nbytes = 4 * getattr(p, "ds_numel", p.numel())
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append((name, p))
        size += nbytes
    return groups


def _persistent_buffers(module: Any) -> dict[str, Any]:
    """Buffers saved with the model (ZeRO does not partition buffers)."""
    saved = set(module.state_dict().keys())
    return {name: b for name, b in module.named_buffers() if name in saved}


def _detached(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Floating-point tensors in `dtype`, the rest (integer buffers) as they are."""
    return {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()}


def base_dtype(resolved: str, trust_remote_code: bool = False) -> Any:
    """The dtype the base checkpoint declares (fp32 when it declares none)."""
    import torch
    from transformers import AutoConfig

    declared = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code).dtype
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.float32


def export_model(engine: Any, cfg: HoneConfig, resolved: str, kind: str, out: Path, tokenizer: Any, rank: int) -> None:
    """Every rank calls this; rank 0 writes `out` (the run's model/) from the base model `resolved`."""
    import torch.distributed as dist

    dtype = base_dtype(resolved, cfg.model.trust_remote_code)
    state: dict[str, Any] = {}
    for chunk in gathered_chunks(engine.module, cfg.deepspeed.zero_stage, rank, cfg.lora.enabled, dtype):
        state.update(chunk)
    if rank == 0:
        if not cfg.lora.enabled:
            state.update(_detached(_persistent_buffers(engine.module), dtype))
        write_model_dir(state, cfg, resolved, kind, tokenizer, out, dtype)
    dist.barrier()


def write_model_dir(
    state: dict[str, Any], cfg: HoneConfig, resolved: str, kind: str, tokenizer: Any, out: Path, dtype: Any
) -> None:
    """Save the trained weights (`state`: the adapter when LoRA is on, else every weight) as a model dir in
    the base `dtype`, atomically: a crash leaves the earlier `out`, never half of a new one."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.lora.enabled:
        model = _with_adapter(state, cfg, resolved, kind, dtype, tmp)
    else:
        model = _skeleton(cfg, resolved, kind, dtype, tokenizer.pad_token_id)
    model.save_pretrained(tmp, state_dict=None if cfg.lora.enabled else state, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _with_adapter(adapter: dict[str, Any], cfg: HoneConfig, resolved: str, kind: str, dtype: Any, tmp: Path) -> Any:
    """The base model in its dtype with the trained adapter: the adapter is saved to tmp/adapter, and the
    merged model returned."""
    from peft import set_peft_model_state_dict

    from hone.training.models import add_lora, load_model

    model = add_lora(load_model(cfg.model, resolved, kind, dtype), cfg.lora, kind)
    unexpected = set_peft_model_state_dict(model, adapter).unexpected_keys  # type: ignore[attr-defined]
    if unexpected:
        raise RuntimeError(f"the trained adapter has weights the model lacks: {unexpected[:5]}")
    model.save_pretrained(tmp / "adapter")
    return model.merge_and_unload()


def _skeleton(cfg: HoneConfig, resolved: str, kind: str, dtype: Any, pad_token_id: int | None) -> Any:
    """The base model's architecture with no weights (meta tensors): save_pretrained writes `state` into its
    layout, so the export never needs a second copy of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(resolved, trust_remote_code=cfg.model.trust_remote_code)
    auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM}.get(kind, AutoModelForSequenceClassification)
    if kind == "reward":  # as models.load_model makes it: one score, read at the last non-pad token
        config.num_labels, config.pad_token_id = 1, pad_token_id
    with torch.device("meta"):
        return auto.from_config(config, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
