"""What packing the chat template's system prompt once per row saves an sft epoch on CPU.

    .venv/bin/python bench/sft_shared_prefix.py              # SmolLM2-135M-Instruct (the quickstart's model)
    .venv/bin/python bench/sft_shared_prefix.py --compile    # both with their blocks compiled (train.compile)

The quickstart's sft step outside Ray: LoRA rank 16 on all linear layers, no dropout, bf16 autocast,
hone's `forward_loss_sum` (label smoothing 0.03), AdamW, micro-batches of 2 packed 256-token rows of the
handbook's question/answer pairs (`examples/handbook/train_qa.jsonl`: every row starts with SmolLM2's
default system prompt). The same examples are packed twice: as plain sequences (`pack(...,
share_prefix=False)`) and behind their shared prefix (the default). Printed: rows and tokens of each
packing; the mean loss over all examples with the untrained weights (the same math: equal but for bf16
rounding); median step times, two copies of the model stepping in alternation so machine load hits both
alike; and the ratio of epoch times (rows / 2 x median step).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smollm2 import handbook_sft_examples  # noqa: E402  (bench/ is on the path when this script runs)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from hone.training.batches import collate
    from hone.training.config import DeepSpeedConfig, HoneConfig, LoraConfig
    from hone.training.ds_config import cpu_autocast
    from hone.training.forward import forward_loss_sum
    from hone.training.models import add_lora, compile_blocks
    from hone.training.tokens import pack, shared_prompt_prefix

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each packing")
    parser.add_argument("--compile", action="store_true", help="compile the blocks of both copies (train.compile)")
    args = parser.parse_args()

    source, tokenizer, examples = handbook_sft_examples(args.model)
    packings = {"plain": pack(examples, 256, share_prefix=False), "shared": pack(examples, 256)}
    # Every row, in micro-batches of 2 (an odd last row alone), so both packings hold all the targets.
    batches = {
        name: [collate(rows[i : i + 2], tokenizer.pad_token_id) for i in range(0, len(rows), 2)]
        for name, rows in packings.items()
    }
    print(f"model {source}\n{len(examples)} examples, {shared_prompt_prefix(examples)} prompt tokens shared by all")
    for name, rows in packings.items():
        print(f"{name}: {len(rows)} packed rows, {sum(len(r['input_ids']) for r in rows)} tokens")

    cfg = HoneConfig(deepspeed=DeepSpeedConfig(precision="bf16"))
    base = add_lora(AutoModelForCausalLM.from_pretrained(source), LoraConfig(dropout=0.0), "causal").train()
    with torch.no_grad():
        for name, todo in batches.items():
            total = count = 0.0
            for batch in todo:
                with cpu_autocast(cfg):
                    loss_sum, n = forward_loss_sum(base, batch, "causal")
                total, count = total + float(loss_sum), count + int(n)
            print(f"{name}: mean loss over all {int(count)} targets {total / count:.5f}")

    models = {name: copy.deepcopy(base) for name in batches}
    if args.compile:
        for model in models.values():
            compile_blocks(model)
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for name, m in models.items()}

    def step(name: str, batch: dict) -> None:
        with cpu_autocast(cfg):
            loss_sum, n = forward_loss_sum(models[name], batch, "causal", 0.03)
        (loss_sum / n).backward()
        optimizers[name].step()
        optimizers[name].zero_grad()

    for name in models:  # warm-up (and the compiles): two lengths
        step(name, batches[name][0])
        step(name, batches[name][1])
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps):
        for name in models:
            start = time.perf_counter()
            step(name, batches[name][2 + i % (len(batches[name]) - 2)])
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    epoch = {name: len(batches[name]) * median[name] for name in models}
    for name in models:
        print(f"{name}: median step {median[name]:.3f} s, epoch of {len(batches[name])} steps ~{epoch[name]:.0f} s")
    print(f"ratio shared/plain: step {median['shared'] / median['plain']:.2f}, epoch {epoch['shared'] / epoch['plain']:.2f}")


if __name__ == "__main__":
    main()
