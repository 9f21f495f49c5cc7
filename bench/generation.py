"""The generation engines side by side on the pipeline's held-out evaluation: SmolLM2-135M answers the
handbook's 80 held-out questions greedily (16 new tokens, as the quickstart's `eval:` asks), through
hone's HF engine in fp32 (the evaluation path today), in bf16, and vLLM in bf16 where it is installed.
Prints generated tokens/s, each engine's ratio against HF fp32 measured in the same run, and how many
answers differ from HF fp32's, with the differing ones.

    .venv/bin/python bench/generation.py                                 # the base SmolLM2 (GGUF)
    .venv/bin/python bench/generation.py --model runs/handbook/3-sft/model --rounds 3

Run it on an idle machine: each engine's rounds alternate with the others'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smollm2 import gguf_path  # noqa: E402  (bench/ is on the path when this script runs)


def main() -> None:
    from hone.training.generation import HfEngine, Sampling, VllmEngine, vllm_available
    from hone.training.models import resolve_source

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = resolve_source(args.model or gguf_path())
    rows = [json.loads(r) for r in (ROOT / "examples/handbook/heldout_eval.jsonl").read_text().splitlines()]
    engines = {"hf fp32 (batch 8)": lambda: HfEngine.load(source, "float32", threads=os.cpu_count() or 1, batch_size=8)}
    engines["hf bf16 (batch 80)"] = lambda: HfEngine.load(source, "bfloat16", threads=os.cpu_count() or 1, batch_size=80)
    if vllm_available():
        engines["vllm bf16"] = lambda: VllmEngine(source, "bfloat16")
    loaded = {}
    for name, make in engines.items():
        started = time.perf_counter()
        loaded[name] = make()
        print(f"{name}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
    tok = next(iter(loaded.values())).tokenizer
    prompts = [tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True) for r in rows]
    sampling = Sampling(args.max_new_tokens)
    answers, rates = {}, {name: [] for name in loaded}
    for engine in loaded.values():
        engine.generate(prompts[:8], sampling)  # warm-up
    for _ in range(args.rounds):
        for name, engine in loaded.items():
            started = time.perf_counter()
            out = engine.generate(prompts, sampling)
            seconds = time.perf_counter() - started
            rates[name].append(sum(len(c.token_ids) for c in out) / seconds)
            answers[name] = [c.text.strip() for c in out]
    print(f"\n{len(prompts)} questions, greedy, <= {args.max_new_tokens} new tokens, {args.rounds} rounds, {source}")
    baseline_name = next(iter(loaded))
    baseline = statistics.median(rates[baseline_name])
    for name in loaded:
        rate = statistics.median(rates[name])
        differ = [i for i, (a, b) in enumerate(zip(answers[name], answers[baseline_name], strict=True)) if a != b]
        print(f"{name:20s} {rate:7.1f} tokens/s  ratio {rate / baseline:5.2f}  answers differing from hf fp32: {len(differ)}")
        for i in differ:
            print(f"    {rows[i]['messages'][0]['content'][:70]!r}: {answers[baseline_name][i]!r} vs {answers[name][i]!r}")


if __name__ == "__main__":  # vLLM starts its engine process: only under __main__
    main()
