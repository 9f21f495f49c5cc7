"""How many prompts a local generator should answer at once: answers/s of hone's own Completer (the code
the synth stage's replay and generator actors run) at several batch sizes, against batch 8 in the same
run; and vLLM (the `vllm` generation backend, which schedules its own batches) where it is installed.

    .venv/bin/python bench/replay_batch.py                  # the quickstart's replay: SmolLM2, T=1, <=96 tokens
    .venv/bin/python bench/replay_batch.py --batch 8 16 32 --prompts 64

Each batch size answers the same prompts (the quickstart's replay prompts, repeated) with the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smollm2 import gguf_path  # noqa: E402  (bench/ is on the path when this script runs)


def main() -> None:
    from hone.synth.local import Completer, LocalSettings
    from hone.training.generation import vllm_available
    from hone.training.models import resolve_source

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model dir, hub id or GGUF file (default: the quickstart's SmolLM2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    rows = (ROOT / "examples" / "retention" / "replay_prompts.jsonl").read_text().splitlines()
    prompts = [json.loads(r)["prompt"] for r in rows]
    prompts = (prompts * (-(-args.prompts // len(prompts))))[: args.prompts]
    source = resolve_source(args.model or gguf_path())
    print(f"{len(prompts)} prompts, <= {args.max_new_tokens} new tokens, temperature {args.temperature}, {source}")
    baseline = 0.0
    runs = [("hf", batch) for batch in args.batch] + ([("vllm", max(args.batch))] if vllm_available() else [])
    for backend, batch in runs:
        settings = LocalSettings(source, args.max_new_tokens, args.temperature, 1.0, batch, seed=0, backend=backend)
        completer = Completer(settings, threads=2)
        completer.complete(prompts[:batch], seed=0)  # warm-up
        started = time.perf_counter()
        completer.complete(prompts, seed=0)
        rate = len(prompts) / (time.perf_counter() - started)
        baseline = baseline or rate
        label = f"batch {batch:3d}" if backend == "hf" else "vllm     "
        print(f"{label}: {rate:5.2f} answers/s  ratio {rate / baseline:4.2f}", flush=True)


if __name__ == "__main__":
    main()
