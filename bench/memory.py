"""Memory at a real model size (issue 15): what ZeRO-3 and gradient checkpointing save, measured on hone runs.

    .venv/bin/python bench/memory.py                 # ~0.32B Llama, about 15 minutes on 2 cores, ~13 GB of RAM
    .venv/bin/python bench/memory.py --layers 32     # ~0.48B: ZeRO-0 full fine-tuning then needs ~20 GB
    .venv/bin/python bench/memory.py --layers 4      # ~0.12B, a smoke run

A Llama built from a config (hidden 1024, 20 layers, vocab 32000: ~0.32B parameters, random weights, saved
in bf16 as hub models are; the issue's ~0.5B, 32 layers, ran out of the 2-core machine's 24 GB under
ZeRO-0, whose two workers hold ~9.7 GB each: that is what ZeRO-3 is for) trains 2 steps through `hone.cluster.run.run`, each run in its own process so
no memory carries over:

    full, ZeRO-0 / ZeRO-3    2 workers, full fine-tuning (fp32 weights, gradients, Adam: 16 bytes a parameter)
    LoRA, ZeRO-0 / ZeRO-3    2 workers, LoRA rank 16 (the frozen base is most of the memory)
    seq 1024 / + checkpoint  1 worker, LoRA, 1024-token sequences, without and with train.gradient_checkpointing

For every worker it reports the peak RSS of its training steps (`train_peak_rss_mb`: before the export,
for which rank 0 holds the weights in the base dtype, as every ZeRO-3 exporter does) and over its whole life
(`peak_rss_mb`); and the driver's (this run's process) peak RSS above its size before the run. Targets:
ZeRO-3's worker peak <= 0.6x ZeRO-0's, full and LoRA; the driver under 1 GB above idle; checkpointing cuts
the seq-1024 peak by >= 40% with the same losses (<= 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/tiny.py (hone itself is installed), when run as a script

RUNS: dict[str, tuple[str, list[str]]] = {
    "full_z0": ("full, ZeRO-0", ["deepspeed.zero_stage=0", "scaling.num_workers=2"]),
    "full_z3": ("full, ZeRO-3", ["deepspeed.zero_stage=3", "scaling.num_workers=2"]),
    "lora_z0": ("LoRA, ZeRO-0", ["deepspeed.zero_stage=0", "scaling.num_workers=2", "lora.enabled=true"]),
    "lora_z3": ("LoRA, ZeRO-3", ["deepspeed.zero_stage=3", "scaling.num_workers=2", "lora.enabled=true"]),
    "seq1024": ("LoRA seq 1024", ["scaling.num_workers=1", "lora.enabled=true", "data.max_seq_len=1024"]),
    "seq1024_ckpt": (
        "LoRA seq 1024 + ckpt",
        ["scaling.num_workers=1", "lora.enabled=true", "data.max_seq_len=1024", "train.gradient_checkpointing=true"],
    ),
}


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: that one carries over the parent's peak across exec (the parent
    # built the model: the first run of this bench showed it as the driver's).
    return status_mb("VmHWM")


def build_model(path: Path, layers: int) -> int:
    """A Llama (~0.32B at 20 layers, ~0.48B at 32) from a config, in bf16, with the tests' tiny tokenizer (ids < 40 of 32000)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import make_tokenizer

    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=1024, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_one(name: str, workdir: Path) -> dict[str, Any]:
    """One hone run in this process (the driver); its workers' and its own memory."""
    from hone.cluster.run import run
    from hone.training.config import load_config

    idle = rss_mb()
    overrides = [
        "mode=pretrain", f"output_dir={workdir / name}", f"model.source={workdir / 'model'}",
        f"data.train=[{workdir / 'text.jsonl'}]", "data.eval=0.05", "data.max_seq_len=256", "data.packing=true",
        "train.max_steps=2", "train.micro_batch_per_device=1", "optim.warmup_steps=0", "eval.max_samples=2",
        "scaling.cpus_per_worker=1", "checkpoint.keep=1", *RUNS[name][1],
    ]  # fmt: skip
    summary = run(load_config(None, overrides))
    losses = [json.loads(line)["loss"] for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "workers": [{k: w.get(k) for k in ("rank", "train_peak_rss_mb", "peak_rss_mb")} for w in summary["workers"]],
        "driver_above_idle_mb": peak_rss_mb() - idle,
        "losses": losses,
    }


def spawn(name: str, workdir: Path) -> dict[str, Any]:
    out, log = workdir / f"{name}.json", workdir / f"{name}.log"
    started = time.time()
    print(f"{RUNS[name][0]:<22}", end="", flush=True)
    command = [sys.executable, __file__, "--only", name, "--workdir", str(workdir)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    print(f"{time.time() - started:5.0f} s", flush=True)
    if code != 0:
        raise SystemExit(f"{RUNS[name][0]} failed (exit {code}); the end of its output:\n" + log.read_text()[-4000:])
    shutil.rmtree(workdir / name)  # its checkpoint and export: several GB each
    return json.loads(out.read_text())


def worst(result: dict[str, Any], key: str) -> float:
    return max(w[key] for w in result["workers"])


def report(results: dict[str, dict[str, Any]], params: int) -> list[str]:
    lines = [f"model: Llama, {params / 1e9:.2f}B parameters (bf16 on disk, fp32 in training on CPU)", ""]
    lines.append(f"{'run':<22}{'steps peak MB':>16}{'whole life MB':>15}{'driver +MB':>12}  per worker (steps)")
    for name, r in results.items():
        per = ", ".join(f"{w['train_peak_rss_mb']:.0f}" for w in r["workers"])
        lines.append(
            f"{RUNS[name][0]:<22}{worst(r, 'train_peak_rss_mb'):>16.0f}{worst(r, 'peak_rss_mb'):>15.0f}"
            f"{r['driver_above_idle_mb']:>12.0f}  {per}"
        )
    lines.append("")
    for kind in ("full", "lora"):
        z0, z3 = results[f"{kind}_z0"], results[f"{kind}_z3"]
        for key, what in (("train_peak_rss_mb", "steps"), ("peak_rss_mb", "whole life")):
            ratio = worst(z3, key) / worst(z0, key)
            lines.append(f"{kind} ZeRO-3 / ZeRO-0 worker peak ({what}): {ratio:.2f}  (target <= 0.6)")
    plain, ckpt = results["seq1024"], results["seq1024_ckpt"]
    cut = 1 - worst(ckpt, "train_peak_rss_mb") / worst(plain, "train_peak_rss_mb")
    diff = max(abs(a - b) for a, b in zip(plain["losses"], ckpt["losses"], strict=True))
    lines.append(f"gradient checkpointing at seq 1024: peak {cut:.0%} lower (target >= 40%), max loss difference {diff:.1e}")
    driver = max(r["driver_above_idle_mb"] for r in results.values())
    lines.append(f"driver peak above idle, worst run: {driver:.0f} MB (target < 1024)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--only", choices=list(RUNS))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    if args.only:
        (args.workdir / f"{args.only}.json").write_text(json.dumps(run_one(args.only, args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="hone-memory-") as tmp:
        workdir = Path(tmp)
        params = build_model(workdir / "model", args.layers)
        from tests.tiny import text_rows, write_jsonl

        write_jsonl(workdir / "text.jsonl", text_rows(2000))
        results = {name: spawn(name, workdir) for name in RUNS}
    lines = report(results, params)
    print("\n".join(lines))
    args.out.write_text(json.dumps({"params": params, "results": results}, indent=1))


if __name__ == "__main__":
    main()
