"""SFT step time with logits only where a target is predicted, against logits at every position.

    .venv/bin/python bench/sft_logits.py              # SmolLM2-135M-Instruct (the quickstart's model), 10 rounds
    .venv/bin/python bench/sft_logits.py --model DIR --rounds 20 --batch 8

One forward + backward of a LoRA (rank 16, all linear layers) model on a micro-batch of the handbook's
sft rows (examples/handbook/train_qa.jsonl: chat prompt ~40 tokens, answer ~5), fp32 on CPU:

    full   causal_lm_loss_sum over the logits of every position (what hone did before)
    kept   forward_loss_sum: the model's `logits_to_keep` = the positions that predict a target token

The two are timed in alternation in the same process, so machine load hits both alike; the ratio of
medians is the claim. Both losses are printed too: they must agree.
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
    from hone.training.config import LoraConfig, ModelConfig
    from hone.training.forward import forward_loss_sum
    from hone.training.losses import causal_lm_loss_sum
    from hone.training.models import add_lora, load_tokenizer, resolve_source
    from hone.training.tokens import build_supervised

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    source = resolve_source(args.model or gguf_path())
    tokenizer = load_tokenizer(ModelConfig(source=source), source)
    model = add_lora(AutoModelForCausalLM.from_pretrained(source), LoraConfig(dropout=0.0), "causal")
    lines = (ROOT / "examples" / "handbook" / "train_qa.jsonl").read_text().splitlines()[: args.batch]
    rows = [{**json.loads(line), "_source": "train_qa.jsonl"} for line in lines]
    batch = collate(build_supervised(rows, "messages", tokenizer, 96)[0], tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def full() -> float:
        loss_sum, n = causal_lm_loss_sum(model(**inputs, use_cache=False).logits, batch["labels"])
        return _step(loss_sum / n)

    def kept() -> float:
        loss_sum, n = forward_loss_sum(model, batch, "causal")
        return _step(loss_sum / n)

    def _step(loss: torch.Tensor) -> float:
        loss.backward()
        model.zero_grad()
        return loss.item()

    print(f"model {source}\nbatch {tuple(batch['input_ids'].shape)}, {int((batch['labels'] != -100).sum())} target tokens")
    print(f"loss: full {full():.6f}  kept {kept():.6f}")  # also the warm-up
    times: dict[str, list[float]] = {"full": [], "kept": []}
    for _ in range(args.rounds):
        for name, fn in (("full", full), ("kept", kept)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:5s} median {medians[name]:.3f} s  best {min(t):.3f} s  ({len(t)} steps)")
    print(f"kept / full step time: {medians['kept'] / medians['full']:.2f}")


if __name__ == "__main__":
    main()
