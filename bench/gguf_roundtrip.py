"""What a GGUF export costs in stored facts: a finished run's held-out questions asked of its HF model and of
its GGUF exports (written by `hone export --format gguf`, read back dequantized by transformers, the way
hone reads any GGUF), greedy, scored as the pipeline scores them. Prints each export's exact match and
contains against the HF model's, and how many answers changed.

    .venv/bin/python bench/gguf_roundtrip.py runs/handbook/4-rl               # the quickstart's last stage
    .venv/bin/python bench/gguf_roundtrip.py RUN_DIR --questions my_eval.jsonl --outtypes f16 q8_0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from hone.cluster.release import to_gguf
    from hone.training.config import load_config
    from hone.training.data import detect_format, load_rows
    from hone.training.evaluate import answer_replies, reply_metrics
    from hone.training.models import resolve_source

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--questions", default=str(ROOT / "examples/handbook/heldout_eval.jsonl"))
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--max-new-tokens", type=int, default=16, help="16: as the handbook pipeline's eval asks")
    args = parser.parse_args()

    cfg = load_config(str(args.run_dir / "config.yaml"), ["eval.max_samples=0", f"eval.max_new_tokens={args.max_new_tokens}"])
    rows = load_rows([args.questions])
    fmt = detect_format(rows, "auto")
    models = {"hf (fp32)": str(args.run_dir / "model")}
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtypes:
            gguf = to_gguf(args.run_dir / "model", Path(tmp) / f"model-{outtype}.gguf", outtype)
            models[f"gguf {outtype}"] = resolve_source(str(gguf))  # dequantized to an HF dir, as hone reads GGUF
        replies = {}
        for name, folder in models.items():
            replies[name] = answer_replies(cfg, folder, rows, fmt)
            print(f"{name}: answered {len(replies[name])} questions", flush=True)

    reference = replies["hf (fp32)"]
    lines = [f"# GGUF round trip: {args.run_dir} ({len(rows)} questions, greedy, {args.max_new_tokens} new tokens)", ""]
    lines += ["| model | exact match | contains | Δ contains vs HF | answers changed |", "| --- | --- | --- | --- | --- |"]
    base = reply_metrics(reference)
    for name, got in replies.items():
        m = reply_metrics(got)
        changed = sum(a["reply"] != b["reply"] for a, b in zip(got, reference, strict=True))
        lines.append(
            f"| {name} | {100 * m['exact_match']:.1f} | {100 * m['contains']:.1f} | "
            f"{100 * (m['contains'] - base['contains']):+.1f} | {changed} |"
        )
    print("\n".join(lines))
    out = ROOT / "bench/results/gguf_roundtrip.md"
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({k: reply_metrics(v) for k, v in replies.items()}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
