"""What the quickstart's two CPU step settings buy: LoRA dropout off, and bf16 autocast.

    .venv/bin/python bench/cpu_step.py              # SmolLM2-135M-Instruct (the quickstart's model), 8 rounds

One forward (hone's `forward_loss_sum`) + backward of a LoRA (rank 16, all linear layers) model on a
micro-batch of 8 handbook sft rows, three ways, timed in alternation in the same process so machine load
hits all alike:

    fp32+dropout   lora.dropout 0.05 (hone's default), fp32
    fp32           lora.dropout 0, fp32
    bf16           lora.dropout 0, `cpu_autocast` (deepspeed.precision: bf16 on CPU)

The ratios of medians against fp32+dropout are the claim; the losses are printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smollm2 import gguf_path  # noqa: E402  (bench/ is on the path when this script runs)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from hone.training.batches import collate
    from hone.training.config import DeepSpeedConfig, HoneConfig, LoraConfig, ModelConfig
    from hone.training.ds_config import cpu_autocast
    from hone.training.forward import forward_loss_sum
    from hone.training.models import add_lora, load_tokenizer, resolve_source
    from hone.training.tokens import build_supervised

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    torch.set_num_threads(2)
    source = resolve_source(args.model or gguf_path())
    tokenizer = load_tokenizer(ModelConfig(source=source), source)
    models = {
        name: add_lora(AutoModelForCausalLM.from_pretrained(source), LoraConfig(dropout=dropout), "causal").train()
        for name, dropout in (("fp32+dropout", 0.05), ("fp32", 0.0))
    }
    models["bf16"] = models["fp32"]
    precision = {"fp32+dropout": "fp32", "fp32": "fp32", "bf16": "bf16"}
    lines = (ROOT / "examples" / "handbook" / "train_qa.jsonl").read_text().splitlines()[: args.batch]
    rows = [{**json.loads(line), "_source": "train_qa.jsonl"} for line in lines]
    batch = collate(build_supervised(rows, "messages", tokenizer, 96)[0], tokenizer.pad_token_id)
    batch.pop("num_real_tokens", None)

    def step(name: str) -> float:
        cfg = HoneConfig(deepspeed=DeepSpeedConfig(precision=precision[name]))  # type: ignore[arg-type]
        model = models[name]
        with cpu_autocast(cfg):
            loss_sum, n = forward_loss_sum(model, batch, "causal")
        loss = loss_sum / n
        loss.backward()
        model.zero_grad()
        return float(loss.detach())

    print(f"model {source}\nbatch {tuple(batch['input_ids'].shape)}")
    print("loss: " + "  ".join(f"{name} {step(name):.4f}" for name in models))  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        ratio = medians[name] / medians["fp32+dropout"]
        print(f"{name:13s} median {medians[name]:.3f} s  best {min(t):.3f} s  ({len(t)} steps)  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
