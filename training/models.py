"""Models and tokenizers from a local directory, a GGUF file or a hub id, plus LoRA.

A GGUF file is converted once to a plain Hugging Face directory and cached: conversion takes ~30 s for a
135M model, reloading the cache well under a second.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

from hone.training.config import ConfigError, LoraConfig, ModelConfig
from hone.training.errors import HoneError
from hone.training.files import files_in, write_text

CACHE_DIR = Path(os.environ.get("HONE_CACHE", Path.home() / ".cache" / "hone"))
# A reward model's score head is new (random) on top of the base model. Drawing it from a fixed seed makes
# the eval-before task, every training worker and the exporter build the very same starting model.
REWARD_HEAD_SEED = 0


class ModelSourceError(HoneError, ValueError):
    """The model source cannot be used; the message says why and what to set instead."""


def looks_like_path(source: str) -> bool:
    """A local path rather than a hub id or a name; "" (an unset field) is neither."""
    return bool(source) and (source.startswith(("/", ".", "~")) or source.endswith(".gguf") or Path(source).exists())


def resolve_source(source: str) -> str:
    """A local directory to load from, or the hub id unchanged. GGUF files are converted (and cached)."""
    if not looks_like_path(source):
        if source.count("/") > 1 or not source.strip():
            raise ModelSourceError(f"model.source={source!r} is neither an existing path nor a hub id like org/name")
        return source
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise ModelSourceError(f"model.source: {path} does not exist; point it at a model directory or .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"model.source: {path} is a file but not .gguf; use a model directory or a .gguf file")
        return str(convert_gguf(path))
    if not (path / "config.json").exists():
        raise ModelSourceError(f"model.source: {path} has no config.json, so it is not a Hugging Face model directory")
    return str(path)


def model_identity(source: str) -> str:
    """What a model is, for the caches of what it generated: a hub id as given; a local directory or GGUF
    file by the sha256 of its contents. A path would be wrong both ways: a copy of the model elsewhere (a
    fresh clone's .venv) would miss the cache, and a model rewritten in place (an earlier stage's output on
    a rerun) would hit answers it never gave. Dot-folders (a hub download's .cache) are left out."""
    if not looks_like_path(source):
        return source
    path = Path(source).expanduser().resolve()
    if not path.exists():  # an earlier stage's model, not written yet: fingerprinted when the stage runs
        return str(path)
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    listing = "".join(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n" for f in files_in(path, hidden=False))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, remembered under its path, size and mtime so that a model of many
    gigabytes is read once, not on every run."""
    stat = path.stat()
    seen = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    memo = CACHE_DIR / "sha256" / seen
    if memo.exists():
        return memo.read_text(encoding="utf-8").strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_text(memo, digest.hexdigest())
    return digest.hexdigest()


def convert_gguf(path: Path) -> Path:
    """Dequantize a GGUF file into an ordinary HF directory, once per content (a copy of the same file
    elsewhere reuses it); later calls reuse the cache."""
    out = CACHE_DIR / "gguf" / f"{path.stem}-{file_sha256(path)[:16]}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"hone: converting {path.name} from GGUF to a cached model directory (once, ~30 s) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model is marked quantized and save_pretrained refuses it: rebuild a plain one.
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
    tmp.rename(out)
    return out


def load_tokenizer(model: ModelConfig, resolved: str, chat_template: str = "") -> Any:
    """The model's tokenizer; `chat_template` (data.chat_template) replaces its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)
    return tokenizer


def known_chat_templates() -> dict[str, Path]:
    """The chat templates TRL ships (trl/chat_templates/*.jinja, model families' own templates), by name."""
    import importlib.util

    spec = importlib.util.find_spec("trl")  # located, not imported (seconds)
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return {p.stem: p for p in sorted(folder.glob("*.jinja")) if not p.stem.endswith("_training")}


def read_chat_template(spec: str) -> str:
    """data.chat_template: a .jinja file, or the name of a template TRL ships (qwen2_5, llama3, ...)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text()
    known = known_chat_templates()
    if spec in known:
        return known[spec].read_text()
    names = ", ".join(known)
    raise ConfigError(
        f"data.chat_template={spec!r} is neither a file nor a known template name; use a .jinja file or one of: {names}"
    )


def objective(model: ModelConfig, resolved: str) -> str:
    """causal or masked: set in the config, or read off the model's architecture."""
    if model.objective != "auto":
        return model.objective
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(resolved, trust_remote_code=model.trust_remote_code)
    for arch in config.architectures or []:
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            return "masked"
        if arch.endswith("ForCausalLM"):
            return "causal"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    raise ModelSourceError(f"model.source: cannot train a {config.model_type!r} model as a causal or masked LM")


def check_max_seq_len(model: ModelConfig, resolved: str, max_seq_len: int) -> None:
    """data.max_seq_len must fit the model's positions: past them, learned position embeddings (GPT-2,
    BERT) fail inside a worker with an index error and rotary ones train silently beyond their context."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolved, trust_remote_code=model.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and max_seq_len > limit:
        raise ModelSourceError(
            f"data.max_seq_len={max_seq_len} is longer than the model reads ({limit} positions, max_position_embeddings "
            f"of {resolved}); set data.max_seq_len to {limit} or less"
        )


def load_model(model: ModelConfig, resolved: str, kind: str, dtype: Any = None) -> Any:
    """kind: causal, masked, or reward (a sequence classifier with one output on the base model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if kind == "reward":
        return _load_reward_model(model, resolved, dtype or torch.float32)
    auto = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    return auto.from_pretrained(
        resolved,
        trust_remote_code=model.trust_remote_code,
        dtype=dtype or torch.float32,
        attn_implementation=_attention(model),
    )


def load_for_engine(model: ModelConfig, resolved: str, kind: str, ds_config: dict[str, Any]) -> Any:
    """The model a DeepSpeed engine with `ds_config` will train, loaded in the dtype it trains in.

    Under ZeRO-3 the model is created already partitioned: transformers' DeepSpeed integration builds it
    inside `deepspeed.zero.Init` (each layer is split across the ranks as soon as it exists) and then
    loads the checkpoint one layer at a time, gathering only that layer while rank 0 copies its tensors in
    from the memory-mapped file. No rank ever holds the whole model, as it would if the model were loaded
    whole and then handed to DeepSpeed to partition (what made ZeRO-3 pointless for models that only fit
    sharded)."""
    from hone.training.ds_config import load_dtype, skip_cpu_inference_comm_op

    dtype = load_dtype(ds_config)
    if ds_config["zero_optimization"]["stage"] != 3:
        return load_model(model, resolved, kind, dtype)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    skip_cpu_inference_comm_op()  # before DeepSpeed's communication backend exists, which would build it
    deepspeed.init_distributed()  # zero.Init reads the world size from DeepSpeed's view of the process group
    if deepspeed.get_accelerator().device_name() == "cpu":
        _return_freed_memory()
    # transformers reads this through a weak reference: it must stay alive while the model loads, and no
    # longer (later from_pretrained calls in this process, e.g. a reference model, load whole as before).
    zero3 = HfDeepSpeedConfig(ds_config)
    try:
        return load_model(model, resolved, kind, dtype)
    finally:
        del zero3


def partitioned(module: Any) -> tuple[int, int]:
    """(parameters, those this rank holds only a partition of): ZeRO-3 leaves a partitioned parameter with
    local numel 0, which the runs report and the tests use to prove sharding happened."""
    params = list(module.parameters())
    return len(params), sum(1 for p in params if p.numel() == 0)


def _return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the system at once, in this process.

    ZeRO-3 gathers each layer's parameters and frees them again, every step. glibc's mmap threshold rises
    to the size of the largest block freed (up to 32 MB), so after the first gather those ~10 MB buffers
    come from the heap, which fragments and never shrinks: on CPU a ZeRO-3 worker then held more than a
    ZeRO-0 one (bench/memory.py). A fixed threshold keeps them mmapped and returned on free. It costs
    time (fresh pages each gather: steps ~1.3x slower, measured on a 0.12B Llama), which ZeRO-3 on CPU, a
    choice made for memory, pays. GPU memory does not go through glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl has no such threshold)
        return
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def _attention(model: ModelConfig) -> str | None:
    return None if model.attn_implementation == "auto" else model.attn_implementation  # None: transformers picks


def enable_gradient_checkpointing(module: Any) -> None:
    """Recompute activations in the backward pass (train.gradient_checkpointing). Non-reentrant checkpoints:
    they need no input that requires grad, so a LoRA model (frozen embeddings) works as it is."""
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _load_reward_model(model: ModelConfig, resolved: str, dtype: Any) -> Any:
    """AutoModelForSequenceClassification with num_labels=1 from a causal model (or an earlier reward model).
    config.pad_token_id must be set: the head scores the last non-pad token, which it finds through it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    pad_id = load_tokenizer(model, resolved).pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REWARD_HEAD_SEED)
        reward = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=1, pad_token_id=pad_id, trust_remote_code=model.trust_remote_code, dtype=dtype,
            attn_implementation=_attention(model),
        )  # fmt: skip
    reward.config.pad_token_id = pad_id
    return reward


def add_lora(module: Any, lora: LoraConfig, kind: str) -> Any:
    """Wrap the model in a peft LoRA adapter; only adapter weights train. For a reward model, peft's SEQ_CLS
    task also trains (and saves) the new score head in full, which the adapter alone could not learn."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type={"causal": TaskType.CAUSAL_LM, "reward": TaskType.SEQ_CLS}.get(kind),
    )
    return get_peft_model(module, peft_config)


def neftune_noise(embeds: Any, alpha: float) -> Any:
    """NEFTune's noise for a batch of input embeddings (batch, length, hidden): uniform in
    +-alpha / sqrt(length x hidden), so its expected norm over a sequence does not grow with its size."""
    import torch

    scale = alpha / math.sqrt(embeds.shape[-2] * embeds.shape[-1])
    return torch.empty_like(embeds).uniform_(-scale, scale)


def add_embedding_noise(module: Any, alpha: float) -> None:
    """Add `neftune_noise` to the input embeddings' output in training mode (evaluation and generation,
    in eval mode, see the embeddings as they are)."""

    def hook(layer: Any, inputs: Any, output: Any) -> Any:
        return output + neftune_noise(output, alpha) if layer.training else output

    hf_model(module).get_input_embeddings().register_forward_hook(hook)


def compile_blocks(module: Any) -> int:
    """torch.compile each transformer block in place (regional compilation): the blocks are alike, so one
    compiled graph serves them all, and compiling takes a block's time instead of the whole model's. The
    blocks are the classes the model declares in `_no_split_modules` (what accelerate keeps whole on one
    device). Returns how many were compiled; 0 leaves the model as it was.

    On CPU, inductor writes C++ and builds it, so a machine without a compiler trains uncompiled (said
    once, not an error: the run is only slower)."""
    import torch

    if not torch.cuda.is_available() and not _cpp_compiler():
        print("hone: train.compile needs a C++ compiler on CPU (install g++); training uncompiled", flush=True)
        return 0
    base = hf_model(module)
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in kinds]
    for block in blocks:
        block.compile()
    if not blocks:
        print(f"hone: train.compile found no transformer blocks in {type(base).__name__}; training uncompiled", flush=True)
    return len(blocks)


def compiled_blocks(module: Any) -> int:
    """How many of `module`'s submodules run compiled (what `compile_blocks` did, read back)."""
    return sum(1 for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None)


def hf_model(model: Any) -> Any:
    """The Hugging Face model under DeepSpeed's engine and peft's wrapper, whichever are there."""
    while hasattr(model, "module"):  # a DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # a peft model
        model = model.get_base_model()
    return model


def _cpp_compiler() -> str | None:
    names = (os.environ.get("CXX", ""), "g++", "clang++", "c++")  # inductor honours $CXX first
    return next((found for name in names if name and (found := shutil.which(name))), None)
