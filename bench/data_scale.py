"""The data path at corpus size (issue 15): a text corpus generated on the fly, no download.

    .venv/bin/python bench/data_scale.py              # 1 GB corpus (~20 min on 2 cores, disk: ~3 GB in /tmp)
    .venv/bin/python bench/data_scale.py --mb 100     # a quicker look

A folder of .txt files (64 KB each) of Zipf-distributed words, a byte-level BPE tokenizer (8k) trained on a
sample of it, and a tiny Llama with that vocabulary. Each measured step runs in a fresh process, so no
memory carries over, and reports its own peak RSS (VmHWM):

    first validate     read, check, tokenize and write the token cache (`hone validate`'s work)
    datasets.map       the baseline: datasets' "text" loader + map(tokenize, batched, num_proc=2), same files
    second validate    the same config again: the cache is reused
    run 10 MB / 1 GB   `hone run`, 1 worker, 3 steps, eval on a small file: the worker's peak RSS with a 10 MB
                       corpus and with the big one (the examples are memory-mapped, not shipped)

Targets: driver (validate and run) peak <= 1.5 GB; a worker with the big corpus <= 200 MB above one with
10 MB; tokenization >= datasets.map(num_proc=2) in tokens/s; the second validate >= 10x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FILE_BYTES = 64 * 1024


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def write_corpus(folder: Path, megabytes: int, seed: int = 0) -> int:
    """Text files of Zipf-distributed words (a 20k-word vocabulary of made-up words), sentences and
    paragraphs: tokenizes like prose, ~4-5 bytes a token."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(1, 10))) for _ in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    folder.mkdir(parents=True)
    pool = rng.choices(words, weights=weights, k=200_000)  # drawn once: choices() per file would dominate the time
    count = megabytes * 1024 * 1024 // FILE_BYTES
    for i in range(count):
        out, size = [], 0
        while size < FILE_BYTES:
            start = rng.randrange(len(pool) - 40)
            sentence = " ".join(pool[start : start + rng.randint(6, 30)]).capitalize() + ". "
            out.append(sentence + ("\n\n" if rng.random() < 0.15 else ""))
            size += len(sentence)
        (folder / f"{i // 1000:03d}" / f"doc{i:06d}.txt").parent.mkdir(exist_ok=True)
        (folder / f"{i // 1000:03d}" / f"doc{i:06d}.txt").write_text("".join(out))
    return count


def build_model(path: Path, corpus: Path) -> None:
    """A byte-level BPE tokenizer trained on a sample of the corpus, and a tiny Llama over its vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    sample = [p.read_text() for p in sorted(corpus.rglob("*.txt"))[:32]]
    core.train_from_iterator(sample, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<pad>", "<eos>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def overrides(workdir: Path, corpus: str, out: str) -> list[str]:
    return [
        "mode=pretrain", f"output_dir={workdir / out}", f"model.source={workdir / 'model'}", f"data.train=[{workdir / corpus}]",
        f"data.eval=[{workdir / 'eval.txt'}]", "data.max_seq_len=512", f"data.cache_dir={workdir / 'cache'}",
        "train.max_steps=3", "train.micro_batch_per_device=4", "eval.max_samples=4", "scaling.num_workers=1",
        "scaling.cpus_per_worker=1", "checkpoint.keep=1",
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# The measured steps, each in its own process (`--step NAME`)


def step_validate(workdir: Path, corpus: str) -> dict[str, Any]:
    from hone.training.config import load_config
    from hone.training.prepare import prepare

    if corpus == "big" and not (workdir / "cache").exists():
        # Timed from where the baseline's clock starts: libraries imported (trl, transformers: ~3 s).
        import hone.training.tokens  # noqa: F401

    started = time.perf_counter()
    prepared = prepare(load_config(None, overrides(workdir, corpus, "validate")))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": prepared.train_stats.num_tokens, "hit": prepared.cache_hit, "peak_mb": peak_rss_mb()}


def step_datasets(workdir: Path, corpus: str) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(workdir / "model"))
    files = sorted(str(p) for p in (workdir / corpus).rglob("*.txt"))
    started = time.perf_counter()
    loaded = datasets.load_dataset("text", data_files=files, sample_by="document", cache_dir=str(workdir / "hf-cache"))["train"]
    read = time.perf_counter() - started
    mapped = loaded.map(lambda b: tok(b["text"]), batched=True, num_proc=2, remove_columns=["text"])
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for batch in mapped.iter(10_000) for ids in batch["input_ids"])
    return {"seconds": seconds, "load_seconds": read, "tokens": tokens, "peak_mb": peak_rss_mb()}


def step_run(workdir: Path, corpus: str) -> dict[str, Any]:
    from hone.cluster.run import run
    from hone.training.config import load_config

    summary = run(load_config(None, overrides(workdir, corpus, f"run-{corpus}")))
    worker = summary["workers"][0]
    return {
        "worker_peak_mb": worker["train_peak_rss_mb"],
        "driver_peak_mb": peak_rss_mb(),
        "reused": summary["data"]["token_cache"]["reused"],
    }


STEPS = {"validate": step_validate, "datasets": step_datasets, "run": step_run}


def spawn(step: str, workdir: Path, corpus: str, label: str) -> dict[str, Any]:
    out, log = workdir / f"{label}.json", workdir / f"{label}.log"
    print(f"{label:<24}", end="", flush=True)
    started = time.time()
    command = [sys.executable, __file__, "--step", step, "--corpus", corpus, "--workdir", str(workdir), "--label", label]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    print(f"{time.time() - started:6.0f} s", flush=True)
    if code != 0:
        raise SystemExit(f"{label} failed (exit {code}); the end of its output:\n" + log.read_text()[-4000:])
    return json.loads(out.read_text())


def report(r: dict[str, dict[str, Any]], megabytes: int) -> list[str]:
    first, second, base = r["first validate"], r["second validate"], r["datasets.map"]
    hone_rate, base_rate = first["tokens"] / first["seconds"], base["tokens"] / base["seconds"]
    small, big = r["run 10 MB"], r[f"run {megabytes} MB"]
    driver = max(first["peak_mb"], second["peak_mb"], big["driver_peak_mb"])
    return [
        f"corpus: {megabytes} MB of text, {first['tokens'] / 1e6:.1f}M tokens (train split)",
        f"tokenize: hone {hone_rate / 1e6:.2f}M tokens/s ({first['seconds']:.0f} s: read, check, tokenize, write), "
        f"datasets.map(num_proc=2) {base_rate / 1e6:.2f}M tokens/s ({base['seconds']:.0f} s, of which loading "
        f"{base['load_seconds']:.0f} s): {hone_rate / base_rate:.2f}x (target >= 1)",
        f"second validate: {second['seconds']:.2f} s, {first['seconds'] / second['seconds']:.0f}x faster (target >= 10)",
        f"driver peak RSS: first validate {first['peak_mb']:.0f} MB, second {second['peak_mb']:.0f} MB, run "
        f"{big['driver_peak_mb']:.0f} MB; worst {driver:.0f} MB (target <= 1536); datasets.map's process {base['peak_mb']:.0f} MB",
        f"worker peak RSS: {small['worker_peak_mb']:.0f} MB with 10 MB, {big['worker_peak_mb']:.0f} MB with {megabytes} MB: "
        f"+{big['worker_peak_mb'] - small['worker_peak_mb']:.0f} MB (target <= 200)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--step", choices=list(STEPS))
    parser.add_argument("--corpus", default="")
    parser.add_argument("--label", default="")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_scale.json")
    args = parser.parse_args()
    if args.step:
        (args.workdir / f"{args.label}.json").write_text(json.dumps(STEPS[args.step](args.workdir, args.corpus)))
        return
    with tempfile.TemporaryDirectory(prefix="hone-data-") as tmp:
        workdir = Path(tmp)
        started = time.time()
        write_corpus(workdir / "big", args.mb)
        write_corpus(workdir / "small", 10, seed=1)
        (workdir / "eval.txt").write_text((workdir / "small" / "000" / "doc000000.txt").read_text()[:8000])
        build_model(workdir / "model", workdir / "small")
        print(f"corpus and model written in {time.time() - started:.0f} s", flush=True)
        results = {
            "first validate": spawn("validate", workdir, "big", "first validate"),
            "second validate": spawn("validate", workdir, "big", "second validate"),
            "datasets.map": spawn("datasets", workdir, "big", "datasets.map"),
            "run 10 MB": spawn("run", workdir, "small", "run 10 MB"),
            f"run {args.mb} MB": spawn("run", workdir, "big", f"run {args.mb} MB"),
        }
        shutil.rmtree(workdir / "hf-cache", ignore_errors=True)
    lines = report(results, args.mb)
    print("\n".join(lines))
    args.out.write_text(json.dumps({"mb": args.mb, "results": results, "report": lines}, indent=1))


if __name__ == "__main__":
    main()
