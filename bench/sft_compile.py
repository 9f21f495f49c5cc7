"""What `train.compile: true` buys an sft step on CPU, and what it costs up front.

    .venv/bin/python bench/sft_compile.py            # SmolLM2-135M-Instruct (the quickstart's model)

The quickstart's sft step, outside Ray so nothing else competes: LoRA rank 16 on all linear layers, no
dropout, bf16 autocast (`cpu_autocast`), hone's `forward_loss_sum` (label smoothing 0.03), AdamW; micro-batches
of 2 packed 256-token rows of the handbook's question/answer pairs. Two copies of the model, one with its
blocks compiled (`hone.training.models.compile_blocks`), take their steps in alternation on the same
batches, so machine load hits both alike. Printed: the compiled copy's first two steps (the compiles: the
second is torch's recompile for dynamic lengths), the first step's loss of both (same weights, same
batch: equal but for kernel rounding), and the ratio of median step times.

The inductor cache (/tmp/torchinductor_$USER) makes a second run's compile faster; remove it for the cold
number.
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
    from hone.training.tokens import pack

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each copy")
    args = parser.parse_args()

    source, tokenizer, examples = handbook_sft_examples(args.model)
    packed = pack(examples, 256, share_prefix=False)  # as measured before prefix sharing existed
    batches = [collate(packed[i : i + 2], tokenizer.pad_token_id) for i in range(0, len(packed) - 1, 2)]
    for batch in batches:
        batch.pop("num_real_tokens", None)

    eager = add_lora(AutoModelForCausalLM.from_pretrained(source), LoraConfig(dropout=0.0), "causal").train()
    compiled = copy.deepcopy(eager)
    blocks = compile_blocks(compiled)
    if not blocks:
        sys.exit("nothing was compiled (see above)")
    cfg = HoneConfig(deepspeed=DeepSpeedConfig(precision="bf16"))
    optimizers = {m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in (eager, compiled)}

    def step(model: torch.nn.Module, batch: dict) -> float:
        with cpu_autocast(cfg):
            loss_sum, n = forward_loss_sum(model, batch, "causal", 0.03)
        (loss_sum / n).backward()
        optimizers[model].step()
        optimizers[model].zero_grad()
        return float(loss_sum.detach() / n)

    print(f"model {source}\n{len(batches)} batches of {tuple(batches[0]['input_ids'].shape)}, {blocks} blocks compiled")
    first = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        first[name] = step(model, batches[0])
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        step(model, batches[1])  # another length: automatic dynamic shapes recompile once
        print(f"{name}: first step {first_s:.1f} s, second {time.perf_counter() - start:.1f} s, first loss {first[name]:.5f}")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(args.steps):
        batch = batches[2 + i % (len(batches) - 2)]
        for name, model in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            step(model, batch)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"median step: eager {medians['eager']:.3f} s, compiled {medians['compiled']:.3f} s")
    print(f"ratio compiled/eager: {medians['compiled'] / medians['eager']:.2f}")


if __name__ == "__main__":
    main()
