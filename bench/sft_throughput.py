"""SFT training throughput: hone against TRL's SFTTrainer and a plain PyTorch loop, on CPU.

    .venv/bin/python bench/sft_throughput.py            # 40 steps per run, about 5 minutes on 2 cores
    .venv/bin/python bench/sft_throughput.py --quick    # 12 steps per run, about 4 minutes (Ray start-up dominates)
    .venv/bin/python bench/sft_throughput.py --steps 60 --out /tmp/sft.json

Every run trains the same freshly built Llama (hidden 256, 4 layers, fp32, sdpa attention) on the same
prompt/completion rows (5 to ~120 tokens each, so padding and packing matter), with micro batch 8,
max length 256, the same lr and the same number of optimizer steps:

    hone (no packing)  cluster.run.run(cfg): a real local Ray cluster, 1 DeepSpeed worker (ZeRO 0)
    hone (packing)     the same with data.packing=true (BFD packs of <= 256 tokens, restarting positions)
    TRL (no packing)   trl.SFTTrainer, completion-only loss, padded batches
    TRL (packing)      trl.SFTTrainer with packing=True (BFD + padding-free: one flat row per batch)
    plain torch        torch.optim.AdamW on hone's own padded batches, causal LM loss on completions

For each run it reports tokens/s (every position in the batch tensors, padding included), non-pad
tokens/s (real tokens only: the number that counts) and the peak RSS of the training process (hone:
its Ray worker). Rates are over the optimizer steps' wall time only, skipping the first 2 (warm-up)
steps, and never include process, Ray or model start-up. hone's step time includes fetching and
collating its batch; TRL's (on_step_begin -> on_step_end) does not, which favours TRL slightly.
Every run is a separate process so neither memory nor threads leak between them. Run it on an
otherwise idle machine (it warns when the load average says otherwise): on 2 cores any other work
shows up directly in the step times, which the JSON keeps per step.

TRL runs with gradient checkpointing and bf16 off (its defaults turn both on), as fp32 on the CPU
(`use_cpu=True`), so all five do the same arithmetic. Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/tiny.py (hone itself is installed), when run as a script

RUNS = {
    "hone": "hone (no packing)",
    "hone_packed": "hone (packing)",
    "trl": "TRL (no packing)",
    "trl_packed": "TRL (packing)",
    "torch": "plain torch",
}
WARMUP_STEPS = 2
MICRO_BATCH = 8
MAX_LEN = 256
LR = 1e-4
SEED = 42
THREADS = len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------------------------------
# Shared setup: one model directory and one data set, built once by the parent process


def build_model(path: Path) -> Path:
    """A Llama big enough that compute, not framework overhead, sets the step time (~2.4M parameters)."""
    from tests.tiny import make_causal_model

    return make_causal_model(path, hidden_size=256, intermediate_size=512, num_layers=4, max_positions=2 * MAX_LEN)


def build_workdir(workdir: Path, steps: int) -> None:
    """model/, train.jsonl (copy tasks of 1..58 letters: 5..119 tokens) and a tiny eval.jsonl."""
    from tests.tiny import copy_rows, write_jsonl

    build_model(workdir / "model")
    # Enough rows that even packed runs (~4 rows per 256-token pack) stay within one epoch.
    write_jsonl(workdir / "train.jsonl", copy_rows(max(400, steps * MICRO_BATCH * 5), seed=0, min_len=1, max_len=58))
    write_jsonl(workdir / "eval.jsonl", copy_rows(8, seed=1, min_len=1, max_len=4))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rates(tokens: list[int], real: list[int], seconds: list[float]) -> dict[str, Any]:
    """Throughput over the steps after warm-up: padded and non-pad tokens per second."""
    every_step = [round(s, 4) for s in seconds]
    tokens, real, seconds = tokens[WARMUP_STEPS:], real[WARMUP_STEPS:], seconds[WARMUP_STEPS:]
    total = sum(seconds)
    return {
        "timed_steps": len(seconds),
        "step_seconds": total / len(seconds),
        "tokens_per_s": sum(tokens) / total,
        "real_tokens_per_s": sum(real) / total,
        "pad_share": 1 - sum(real) / sum(tokens),
        "every_step_seconds": every_step,  # warm-up included, to spot noise from other work on the machine
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------
# hone: the public Python API, one worker on an embedded Ray cluster


def hone_config(workdir: Path, steps: int, packing: bool) -> Any:
    from hone.training.config import load_config

    overrides = {
        "mode": "sft",
        "seed": SEED,
        "output_dir": str(workdir / ("hone_packed" if packing else "hone")),
        "overwrite": True,
        "model.source": str(workdir / "model"),
        "data.train": [str(workdir / "train.jsonl")],
        "data.eval": [str(workdir / "eval.jsonl")],
        "data.max_seq_len": MAX_LEN,
        "data.packing": packing,
        "optim.lr": LR,
        "train.max_steps": steps,
        "train.micro_batch_per_device": MICRO_BATCH,
        "train.grad_accum": 1,
        "deepspeed.zero_stage": 0,
        "scaling.num_workers": 1,
        "scaling.cpus_per_worker": THREADS,  # Ray sets the worker's OMP threads from this
        "eval.max_samples": 1,  # the before/after eval is not what this bench measures
        "eval.max_new_tokens": 1,
    }
    return load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])


def run_hone(workdir: Path, steps: int, packing: bool) -> dict[str, Any]:
    from hone.cluster.run import run

    cfg = hone_config(workdir, steps, packing)
    summary = run(cfg)
    lines = Path(cfg.output_dir, "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "step_seconds" in r]
    result = rates([r["tokens"] for r in records], [r["real_tokens"] for r in records], [r["step_seconds"] for r in records])
    worker = summary["workers"][0]
    return {
        **result,
        "peak_rss_mb": worker.get("peak_rss_mb"),
        "worker_torch_threads": worker.get("torch_threads"),
        "summary_tokens_per_s": summary["tokens_per_s"],  # hone's own figure, warm-up steps included
        "summary_real_tokens_per_s": summary["real_tokens_per_s"],
        "final_loss": summary["final_loss"],
        "wall_seconds": summary["wall_seconds"],
    }


# ----------------------------------------------------------------------------------------------------
# TRL: SFTTrainer in this process, timed by a callback, tokens counted as batches are collated


class CountingCollator:
    """Wraps the trainer's collator and records (padded tokens, non-pad tokens) per batch, in order."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.counts = inner, []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        mask = batch.get("attention_mask")
        # Padding-free (packed) batches are one flat row of real tokens with no attention mask.
        real = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.counts.append((batch["input_ids"].numel(), real))
        return batch


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def trl_config(workdir: Path, steps: int, packing: bool) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(workdir / ("trl_packed" if packing else "trl")),
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        max_length=MAX_LEN,
        packing=packing,
        completion_only_loss=True,
        activation_checkpointing=False,  # TRL turns it on by default
        bf16=False,
        fp16=False,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=SEED,
    )


def run_trl(workdir: Path, steps: int, packing: bool) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    train = datasets.Dataset.from_list(read_rows(workdir / "train.jsonl"))
    timer = step_timer()
    trainer = SFTTrainer(
        model=model, args=trl_config(workdir, steps, packing), train_dataset=train, processing_class=tokenizer, callbacks=[timer]
    )
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter  # the train dataloader is built from this attribute inside train()
    trainer.train()
    counts = counter.counts[: len(timer.seconds)]  # the dataloader may prefetch a batch past the last step
    return {**rates([c[0] for c in counts], [c[1] for c in counts], timer.seconds), "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------------------------------
# Plain PyTorch: hone's examples and padded collation, no framework around the step


def run_torch(workdir: Path, steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from hone.training.batches import collate, example_indices
    from hone.training.prepare import prepare

    torch.manual_seed(SEED)
    prepared = prepare(hone_config(workdir, steps, packing=False))
    examples = prepared.train_examples
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).train()
    pad_id = model.config.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens, real, seconds = [], [], []
    for step in range(steps):
        started = time.perf_counter()
        ids = example_indices(step, 0, 0, len(examples), SEED, MICRO_BATCH, 1, 1)
        batch = collate([examples[i] for i in ids], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        tokens.append(batch["input_ids"].numel())
        real.append(int(batch["num_real_tokens"]))
    return {**rates(tokens, real, seconds), "peak_rss_mb": peak_rss_mb(), "final_loss": float(loss.detach())}


def run_one(name: str, workdir: Path, steps: int) -> dict[str, Any]:
    if name in ("trl", "trl_packed"):
        import torch

        torch.set_num_threads(THREADS)
        return run_trl(workdir, steps, packing=name == "trl_packed")
    if name == "torch":
        import torch

        torch.set_num_threads(THREADS)
        return run_torch(workdir, steps)
    return run_hone(workdir, steps, packing=name == "hone_packed")


# ----------------------------------------------------------------------------------------------------
# The parent: build once, run each configuration in its own process, print and save


def run_child(name: str, workdir: Path, steps: int) -> dict[str, Any]:
    """Re-invoke this script with --only NAME; its output goes to a log file, its result to JSON."""
    out, log = workdir / f"{name}.json", workdir / f"{name}.log"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--only", name, "--workdir", str(workdir), "--steps", str(steps), "--out", str(out)]
    started = time.time()
    print(f"running {RUNS[name]:<18} ...", end=" ", flush=True)
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    print(f"{time.time() - started:5.0f} s  (load average now {os.getloadavg()[0]:.1f})", flush=True)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"{RUNS[name]} failed (exit {code}); the end of its output:\n{tail}")
    return json.loads(out.read_text())


def ratios(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(description, value, target or None)."""

    def rate(name: str, key: str) -> float:
        return results[name][key]

    return [
        ("hone / TRL tokens/s, no packing", rate("hone", "tokens_per_s") / rate("trl", "tokens_per_s"), 0.9),
        (
            "hone packed / TRL unpacked non-pad tokens/s",
            rate("hone_packed", "real_tokens_per_s") / rate("trl", "real_tokens_per_s"),
            1.3,
        ),
        (
            "hone packed / TRL packed non-pad tokens/s",
            rate("hone_packed", "real_tokens_per_s") / rate("trl_packed", "real_tokens_per_s"),
            None,
        ),
        ("hone / plain torch tokens/s, no packing", rate("hone", "tokens_per_s") / rate("torch", "tokens_per_s"), None),
    ]


def format_report(results: dict[str, dict[str, Any]], steps: int) -> str:
    lines = [
        f"\nSFT throughput, {steps} steps per run ({steps - WARMUP_STEPS} timed), micro batch {MICRO_BATCH}, "
        f"max length {MAX_LEN}, {THREADS} CPU threads, fp32",
        f"{'run':<20}{'tokens/s':>12}{'non-pad tok/s':>15}{'pad share':>11}{'s/step':>9}{'peak RSS MB':>13}",
    ]
    for name, label in RUNS.items():
        r = results[name]
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "n/a"
        lines.append(
            f"{label:<20}{r['tokens_per_s']:>12.0f}{r['real_tokens_per_s']:>15.0f}{r['pad_share']:>10.0%}"
            f"{r['step_seconds']:>9.3f}{rss:>13}"
        )
    lines.append("")
    for text, value, target in ratios(results):
        verdict = "" if target is None else f"  (target >= {target}: {'met' if value >= target else 'MISSED'})"
        lines.append(f"{text:<46}{value:>6.2f}{verdict}")
    return "\n".join(lines)


def warn_if_busy() -> None:
    load = os.getloadavg()[0]
    if load > THREADS / 2:
        print(f"warning: load average {load:.1f} on {THREADS} cores: other work will skew these numbers", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 40; 12 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run of the whole bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sft_throughput.json")
    parser.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (12 if args.quick else 40)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        args.out.write_text(json.dumps(run_one(args.only, args.workdir, args.steps)))
        return
    warn_if_busy()
    with tempfile.TemporaryDirectory(prefix="hone-bench-") as tmp:
        workdir = Path(tmp)
        build_workdir(workdir, args.steps)
        results = {name: run_child(name, workdir, args.steps) for name in RUNS}
    print(format_report(results, args.steps))
    settings = {
        "steps": args.steps,
        "warmup_steps": WARMUP_STEPS,
        "micro_batch": MICRO_BATCH,
        "max_len": MAX_LEN,
        "lr": LR,
        "threads": THREADS,
    }
    report = {
        "settings": settings,
        "runs": {name: {"label": RUNS[name], **result} for name, result in results.items()},
        "ratios": [{"ratio": text, "value": value, "target": target} for text, value, target in ratios(results)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
