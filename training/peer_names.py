"""The setting names users bring from TRL (transformers' TrainingArguments, TRL's SFT/DPO configs and model
arguments) and Axolotl, and the hone keys they mean: `hone import-config` translates a whole file with
them, and an unknown key in a hone config that is one of them is answered with its hone name.

Each entry maps a peer name to (hone key, convert). `convert` takes the peer's value and returns hone's, or
raises `Unmapped` with the reason when the value has no hone equivalent (it is then listed, never dropped
silently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Unmapped(ValueError):
    """A peer setting whose value hone cannot take as it is; the message says why."""


def _same(value: Any) -> Any:
    return value


def _positive(value: Any) -> Any:
    if not isinstance(value, (int, float)) or value <= 0:
        raise Unmapped(f"{value!r} means 'not set' there; hone's default applies")
    return value


def _whole_epochs(value: Any) -> int:
    if not isinstance(value, (int, float)) or value <= 0 or value != int(value):
        raise Unmapped("hone trains whole epochs; set train.num_epochs, or train.max_steps for part of one")
    return int(value)


def _schedule(value: Any) -> str:
    if value in ("cosine", "linear", "constant"):
        return str(value)
    if value == "constant_with_warmup":
        return "constant"  # hone's warmup is optim.warmup_steps, before any schedule
    raise Unmapped("hone's schedules (optim.decay) are cosine, linear and constant")


def _precision(value: Any) -> str:
    if value is True or value == "auto":
        return "auto" if value == "auto" else "bf16"
    raise Unmapped("false is hone's default off a GPU (deepspeed.precision: auto picks bf16 on GPUs that have it)")


def _adapter(value: Any) -> bool:
    if value == "lora":
        return True
    raise Unmapped("hone trains LoRA adapters (lora.enabled); quantized (qlora) and other adapters are not supported")


def _dataset_paths(value: Any) -> list[Any]:
    """Axolotl's `datasets: [{path, type, split, name}, ...]` (or TRL's dataset_name): the paths, with the
    split and subset (Axolotl's `name`) where given; hone detects formats, so `type` is not needed."""
    sources: list[Any] = []
    for entry in value if isinstance(value, list) else [value]:
        path = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(path, str) or not path:
            raise Unmapped("each dataset needs a path")
        picked = {"split": entry.get("split"), "subset": entry.get("name")} if isinstance(entry, dict) else {}
        picked = {k: str(v) for k, v in picked.items() if v}
        sources.append({"path": path, **picked} if picked else path)
    return sources


def _flash(value: Any) -> str:
    if value is True:
        return "flash_attention_2"
    raise Unmapped("hone's default attention (model.attn_implementation: auto) applies")


def _all_linear(value: Any) -> str:
    if value is True:
        return "all-linear"
    raise Unmapped("lora.target_modules names the modules instead")


def _eval_fraction(value: Any) -> float:
    if isinstance(value, (int, float)) and 0 < value < 1:
        return float(value)
    raise Unmapped("hone holds out a fraction of the rows (data.eval: 0.1) or reads eval files")


def _dpo(value: Any) -> str:
    if value == "dpo":
        return "dpo"
    raise Unmapped("hone's preference modes are dpo and reward (mode: dpo)")


Convert = Callable[[Any], Any]

# Shared by TRL (TrainingArguments) and Axolotl, where they mean the same.
COMMON: dict[str, tuple[str, Convert]] = {
    "learning_rate": ("optim.lr", _same),
    "gradient_accumulation_steps": ("train.grad_accum", _same),
    "warmup_steps": ("optim.warmup_steps", _same),
    "weight_decay": ("optim.weight_decay", _same),
    "max_grad_norm": ("optim.grad_clip", _same),
    "max_steps": ("train.max_steps", _positive),
    "seed": ("seed", _same),
    "output_dir": ("output_dir", _same),
    "gradient_checkpointing": ("train.gradient_checkpointing", _same),
    "bf16": ("deepspeed.precision", _precision),
    "eval_steps": ("eval.every_steps", _positive),
    "save_steps": ("checkpoint.every_steps", _positive),
    "save_total_limit": ("checkpoint.keep", _positive),
    "lora_r": ("lora.rank", _same),
    "lora_alpha": ("lora.alpha", _same),
    "lora_dropout": ("lora.dropout", _same),
    "neftune_noise_alpha": ("train.neftune_alpha", _same),
    "lora_target_modules": ("lora.target_modules", _same),
    "attn_implementation": ("model.attn_implementation", _same),
    "trust_remote_code": ("model.trust_remote_code", _same),
}

TRL: dict[str, tuple[str, Convert]] = {
    **COMMON,
    "model_name_or_path": ("model.source", _same),
    "dataset_name": ("data.train", _dataset_paths),
    "per_device_train_batch_size": ("train.micro_batch_per_device", _same),
    "num_train_epochs": ("train.num_epochs", _whole_epochs),
    "lr_scheduler_type": ("optim.decay", _schedule),
    "max_length": ("data.max_seq_len", _same),
    "max_seq_length": ("data.max_seq_len", _same),
    "packing": ("data.packing", _same),
    "completion_only_loss": ("data.train_on_prompt", lambda v: not v),
    "use_peft": ("lora.enabled", _same),
    "beta": ("dpo.beta", _same),
    "label_smoothing_factor": ("train.label_smoothing", _same),
}

AXOLOTL: dict[str, tuple[str, Convert]] = {
    **COMMON,
    "base_model": ("model.source", _same),
    "datasets": ("data.train", _dataset_paths),
    "val_set_size": ("data.eval", _eval_fraction),
    "sequence_len": ("data.max_seq_len", _same),
    "sample_packing": ("data.packing", _same),
    "train_on_inputs": ("data.train_on_prompt", _same),
    "micro_batch_size": ("train.micro_batch_per_device", _same),
    "num_epochs": ("train.num_epochs", _whole_epochs),
    "lr_scheduler": ("optim.decay", _schedule),
    "adapter": ("lora.enabled", _adapter),
    "lora_target_linear": ("lora.target_modules", _all_linear),
    "flash_attention": ("model.attn_implementation", _flash),
    "rl": ("mode", _dpo),
    "rl_beta": ("dpo.beta", _same),
    "dpo_beta": ("dpo.beta", _same),
}

TOOLS = {"trl": TRL, "axolotl": AXOLOTL}

# Why some settings users often set have no hone equivalent (the others: "no hone setting is known").
REASONS = {
    "warmup_ratio": "hone's warmup is counted in steps: set optim.warmup_steps",
    "optimizer": "hone trains with AdamW (torch's on CPU, DeepSpeed's fused one on GPUs)",
    "optim": "hone trains with AdamW (torch's on CPU, DeepSpeed's fused one on GPUs)",
    "special_tokens": "hone uses the tokenizer's own special tokens",
    "evals_per_epoch": "hone evaluates every eval.every_steps steps",
    "saves_per_epoch": "hone checkpoints every checkpoint.every_steps steps (or checkpoint.every_minutes)",
    "load_in_4bit": "hone does not train quantized models",
    "load_in_8bit": "hone does not train quantized models",
    "fp16": "hone trains in bf16 or fp32 (deepspeed.precision)",
}

# Settings that only say how a peer runs, with nothing for hone to do: not listed as unmapped.
IGNORED = {"eval_strategy", "evaluation_strategy", "save_strategy", "logging_steps", "do_train", "do_eval", "report_to"}


def hone_name(key: str) -> str | None:
    """The hone key a peer setting name means (TRL's, then Axolotl's), or None."""
    for names in TOOLS.values():
        if key in names:
            return names[key][0]
    return None


def guess_tool(raw: dict[str, Any]) -> str:
    """Axolotl configs name `base_model`; TRL's name `model_name_or_path`."""
    return "axolotl" if "base_model" in raw or "datasets" in raw else "trl"


def translate(raw: dict[str, Any], tool: str) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """A peer config as a nested hone config, and what could not be carried over: (key, value, why)."""
    names = TOOLS[tool]
    out: dict[str, Any] = {}
    unmapped: list[tuple[str, Any, str]] = []
    for key, value in raw.items():
        if key in IGNORED or value is None or value == "":
            continue  # unset (Axolotl writes unset settings as empty keys)
        if key in ("adam_beta1", "adam_beta2"):
            betas = _betas(out)
            betas[key == "adam_beta2"] = value
            continue
        if key not in names:
            if value is not False:  # a feature switched off that hone does not have is hone's behaviour too
                unmapped.append((key, value, REASONS.get(key, f"no hone setting is known for {tool}'s {key}")))
            continue
        target, convert = names[key]
        try:
            _put(out, target, convert(value))
        except Unmapped as why:
            unmapped.append((key, value, str(why)))
    return out, unmapped


def _betas(out: dict[str, Any]) -> list[float]:
    optim = out.setdefault("optim", {})
    return optim.setdefault("betas", [0.9, 0.999])


def _put(out: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    node = out
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
