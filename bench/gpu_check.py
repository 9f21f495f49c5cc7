"""hone's training step at a real size on one GPU: MFU, tokens/s and peak memory (issue 15).

    bench/gpu_check.sh                     # on the GPU machine: installs the carried wheels, then runs this
    python bench/gpu_check.py --out DIR    # the same, with DeepSpeed already importable

Builds a ~1.5B-parameter Llama from bench/configs/llama-1.5b.json (random weights: nothing to download),
saves it in bf16, and trains it for --steps steps of causal-LM SFT through hone's own code, no Ray: the
model is loaded by `load_for_engine` (sharded under ZeRO-3), the engine is `initialize_engine`'s (hone's
DeepSpeed JSON: optimizer, precision, buckets), the loss `forward_loss_sum`. Two runs, one process each:

    zero2        ZeRO-2, bf16
    zero3_ckpt   ZeRO-3, bf16, train.gradient_checkpointing

Every few steps it rewrites DIR/gpu_check.json (per run: step times, tokens/s, MFU, peak GPU memory) so
a run cut short still leaves numbers. MFU counts 6 x parameters FLOPs per token (forward and backward;
the recomputation under checkpointing is not counted, as is usual) plus attention's 12 x layers x hidden
x sequence, against the GPU's dense bf16 peak (--peak-tflops, default the H100/H200's 989).
--device cpu --layers 2 runs the same code on CPU, tiny, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"zero2": (2, False), "zero3_ckpt": (3, True)}


def hone_importable() -> None:
    """`import hone.training...` from this checkout without installing it: hone is a namespace package whose
    parts are the repository's top-level folders (pyproject's package-dir), so link them under one dir."""
    shim = Path(tempfile.gettempdir()) / "hone-namespace"
    (shim / "hone").mkdir(parents=True, exist_ok=True)
    for part in ("cluster", "training", "rl", "synth"):
        link = shim / "hone" / part
        if not link.exists():
            link.symlink_to(ROOT / part)
    sys.path.insert(0, str(shim))


def build_model(path: Path, layers: int | None) -> int:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**json.loads((ROOT / "bench" / "configs" / "llama-1.5b.json").read_text()))
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(256)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0")
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def train(name: str, model_dir: Path, args: argparse.Namespace, out: Path) -> None:
    """One run in this process; appends its numbers to `out` as it goes."""
    import torch
    import torch.distributed as dist

    from hone.training.config import from_dict
    from hone.training.ds_config import engine_config, initialize_engine
    from hone.training.forward import forward_loss_sum
    from hone.training.models import enable_gradient_checkpointing, load_for_engine

    stage, checkpointing = RUNS[name]
    gpu = args.device == "cuda"
    dist.init_process_group("nccl" if gpu else "gloo")
    cfg = from_dict({
        "model": {"source": str(model_dir)}, "data": {"train": [str(model_dir)], "max_seq_len": args.seq},
        "scaling": {"use_gpu": gpu, "num_workers": 1},
        "deepspeed": {"zero_stage": stage, "precision": "bf16" if gpu else "fp32"},
        "train": {"micro_batch_per_device": args.micro_batch, "gradient_checkpointing": checkpointing},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
    })  # fmt: skip
    started = time.time()
    model = load_for_engine(cfg.model, str(model_dir), "causal", engine_config(cfg))
    if checkpointing:
        enable_gradient_checkpointing(model)
    engine = initialize_engine(model, cfg, args.steps)
    config = model.config
    params = int(sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    record: dict[str, Any] = {"zero_stage": stage, "gradient_checkpointing": checkpointing, "params": params,
                              "load_and_init_s": time.time() - started, "step_s": [], "losses": []}  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    tokens = args.micro_batch * args.seq
    for step in range(args.steps):
        ids = torch.randint(1, 256, (args.micro_batch, args.seq), generator=generator).to(engine.device)
        if gpu:
            torch.cuda.synchronize()
        t0 = time.time()
        loss_sum, count = forward_loss_sum(engine, {"input_ids": ids, "labels": ids}, "causal")
        engine.backward(loss_sum / count)
        engine.step()
        if gpu:
            torch.cuda.synchronize()
        record["step_s"].append(time.time() - t0)
        record["losses"].append(float(loss_sum / count))
        if step % 5 == 4 or step == args.steps - 1:
            timed = record["step_s"][2:] or record["step_s"]  # the first steps warm kernels and allocators up
            rate = tokens * len(timed) / sum(timed)
            record.update(tokens_per_s=rate, mfu=rate * flops_per_token / (args.peak_tflops * 1e12), steps_done=step + 1)
            if gpu:
                record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            results = json.loads(out.read_text()) if out.exists() else {}
            out.write_text(json.dumps({**results, name: record}, indent=1))
            print(f"{name}: step {step + 1}, {rate:.0f} tokens/s, MFU {record['mfu']:.1%}", flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--layers", type=int, help="fewer layers than the config's (a quick check of the script)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)  # H100/H200 SXM dense bf16
    parser.add_argument("--only", choices=list(RUNS))
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    hone_importable()
    out = args.out / "gpu_check.json"
    if args.only:
        train(args.only, args.model_dir, args, out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model" if args.device == "cpu" else Path(tempfile.mkdtemp()) / "model"
    params = build_model(model_dir, args.layers)
    print(f"built a {params / 1e9:.2f}B-parameter Llama in {model_dir}", flush=True)
    for name in RUNS:  # a process each: DeepSpeed's and CUDA's state do not carry over
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
               "WORLD_SIZE": "1", **({"DS_ACCELERATOR": "cpu"} if args.device == "cpu" else {})}  # fmt: skip
        command = [sys.executable, __file__, *sys.argv[1:], "--only", name, "--model-dir", str(model_dir), "--out", str(args.out)]
        code = subprocess.run(command, env=env).returncode
        print(f"{name}: exit {code}", flush=True)
    print(out.read_text() if out.exists() else "no results")


if __name__ == "__main__":
    main()
