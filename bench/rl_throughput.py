"""RL (GRPO) throughput: hone sync and async, rolling out with HF generate and with vLLM, and TRL's
GRPOTrainer, on CPU.

    .venv-vllm/bin/python bench/rl_throughput.py       # 30 steps per run (28 timed), about 9 minutes on an idle 2-core machine
    .venv/bin/python bench/rl_throughput.py            # without vLLM installed: the hf and TRL runs only
    .venv-vllm/bin/python bench/rl_throughput.py --quick   # 5 steps per run (3 timed): a smoke run
    .venv/bin/python bench/rl_throughput.py --steps 40 --out /tmp/rl.json

Every run trains the same freshly built Llama (hidden 256, 4 layers, ~2.4M parameters, fp32) on the
same toy prompts ("copy x ->", tests/rl/conftest.py) with the same rewards (a regex that pays for
starting with a letter plus an exact match on the answer, weights 1 and 1), the same GRPO settings
(group size 8, 8 prompts per step, so 64 samples and one optimizer step per RL step; 16 new tokens,
temperature 1, micro-batch 16 with gradient accumulation 4, lr 1e-4 constant, clip 0.2, no KL):

    hone sync    cluster.run.run(cfg), rl.async_rollout=false: generate -> score -> update -> sync, in turn
    hone async   the same with rl.async_rollout=true: the next step's rollout overlaps this step's update
                 (each with generation.backend hf: HF generate in fp32, and vllm: vLLM in bf16, weights
                 reloaded into it after every update, truncated IS correcting for its distribution)
    TRL          trl.GRPOTrainer (use_vllm=False, beta=0, loss_type dapo = hone's token_mean), one process
    TRL 1 thread the same with one torch thread: like for like with each of hone's actors

Resources: hone gets an embedded local Ray cluster with the machine's CPUs; its policy actor (DeepSpeed,
ZeRO 0) and its rollout actor get 1 CPU and 1 torch thread each, the reward actor 0 CPUs. TRL generates
and updates in one process, so it gets torch.set_num_threads(<all cores>) (2 here). Measured here: a
2-thread process collapses when the machine is busy (steps of 0.5 s became 10-50 s at load 8-17: each
parallel region waits for a thread that is not scheduled), 1-thread processes do not; hence the extra
1-thread TRL run, and medians and best steps beside the means.

Rates skip the first 2 (warm-up) steps and never include process, Ray or model start-up:
  - hone: `step_seconds` from metrics.jsonl (collect the step's rollout -> score -> update -> weight
    sync), plus the interval between consecutive metrics records as a cross-check (the whole loop);
    the wall time of `run()` (Ray start, actors, before/after eval, export) is reported separately;
  - TRL: a callback from on_step_begin to on_step_end (generation, scoring and every accumulation
    micro-step of the optimizer step), plus the on_step_end -> on_step_end interval as a cross-check.
Every run is a separate process so neither memory nor threads leak between them. The machine may be
shared: the load average is printed after each run and the JSON keeps every step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ (hone itself is installed), when run as a script

RUNS = {
    "hone_sync": "hone sync, hf",
    "hone_async": "hone async, hf",
    "hone_sync_vllm": "hone sync, vllm",
    "hone_async_vllm": "hone async, vllm",
    "trl": "TRL GRPOTrainer",
    "trl_1thread": "TRL, 1 thread",
}
WARMUP_STEPS = 2
GROUP_SIZE = 8
PROMPTS_PER_STEP = 8
SAMPLES_PER_STEP = GROUP_SIZE * PROMPTS_PER_STEP
MICRO_BATCH = 16
GRAD_ACCUM = SAMPLES_PER_STEP // MICRO_BATCH
MAX_NEW_TOKENS = 16
MAX_SEQ_LEN = 64
LR = 1e-4
CLIP = 0.2
SEED = 42
NUM_PROMPTS = 120
LETTER_FIRST = "^[a-p]( |$)"
THREADS = len(os.sched_getaffinity(0))
HONE_THREADS = {"policy": 1, "rollout": 1, "reward": 0}  # CPUs per actor; each actor's torch threads follow


# ----------------------------------------------------------------------------------------------------
# Shared setup: one model directory and one prompt set, built once by the parent process


def build_model(path: Path) -> Path:
    """The SFT bench's Llama (hidden 256, 4 layers, ~2.4M parameters): big enough that compute sets the pace."""
    from tests.tiny import make_causal_model

    return make_causal_model(path, hidden_size=256, intermediate_size=512, num_layers=4, max_positions=2 * MAX_SEQ_LEN)


def build_workdir(workdir: Path) -> None:
    from tests.rl.conftest import letter_prompts
    from tests.tiny import write_jsonl

    build_model(workdir / "model")
    write_jsonl(workdir / "prompts.jsonl", letter_prompts(NUM_PROMPTS, seed=0))
    write_jsonl(workdir / "eval.jsonl", letter_prompts(8, seed=1))  # hone's before/after eval: kept small


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rates(seconds: list[float], loop_seconds: list[float]) -> dict[str, Any]:
    """Samples/s and s/step over the steps after warm-up; `loop_seconds` are the record-to-record gaps."""
    timed, loop = seconds[WARMUP_STEPS:], loop_seconds[WARMUP_STEPS:]
    return {
        "timed_steps": len(timed),
        "step_seconds": sum(timed) / len(timed),
        "samples_per_s": SAMPLES_PER_STEP * len(timed) / sum(timed),
        "loop_step_seconds": sum(loop) / len(loop) if loop else None,
        # The median shrugs off bursts of other work on a shared machine; the mean is the headline figure.
        "median_step_seconds": statistics.median(timed),
        "median_samples_per_s": SAMPLES_PER_STEP / statistics.median(timed),
        "min_step_seconds": min(timed),  # the best step: roughly what a quiet machine gives
        "every_step_seconds": [round(s, 4) for s in seconds],  # warm-up included, to spot noise
    }


def mean_after_warmup(values: list[float]) -> float:
    timed = values[WARMUP_STEPS:]
    return sum(timed) / len(timed)


# ----------------------------------------------------------------------------------------------------
# hone: the public Python API on an embedded Ray cluster (cluster/connect.py starts and stops it)


def hone_config(workdir: Path, name: str, steps: int) -> Any:
    from hone.training.config import load_config

    overrides = {
        "mode": "rl",
        "seed": SEED,
        "output_dir": str(workdir / name),
        "generation.backend": "vllm" if name.endswith("_vllm") else "hf",
        "overwrite": True,
        "model.source": str(workdir / "model"),
        "data.train": [str(workdir / "prompts.jsonl")],
        "data.eval": [str(workdir / "eval.jsonl")],
        "data.max_seq_len": MAX_SEQ_LEN,
        "optim.lr": LR,
        "optim.decay": "constant",
        "train.max_steps": steps,
        "train.micro_batch_per_device": MICRO_BATCH,
        "eval.max_samples": 8,
        "scaling.num_workers": 1,
        "scaling.cpus_per_worker": HONE_THREADS["policy"],
        "rl.group_size": GROUP_SIZE,
        "rl.prompts_per_step": PROMPTS_PER_STEP,
        "rl.clip_low": CLIP,
        "rl.clip_high": CLIP,
        "rl.kl_coef": 0.0,
        "rl.async_rollout": name.startswith("hone_async"),
        "rl.generation.max_new_tokens": MAX_NEW_TOKENS,
        "rl.rollout.cpus": HONE_THREADS["rollout"],
        "rl.reward.cpus": HONE_THREADS["reward"],
        "rl.rewards": [
            {"type": "regex", "pattern": LETTER_FIRST, "name": "letter_first"},
            {"type": "exact_match", "field": "answer"},
        ],
    }
    return load_config(None, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])


def run_hone(workdir: Path, name: str, steps: int) -> dict[str, Any]:
    from hone.cluster.run import run

    cfg = hone_config(workdir, name, steps)
    started = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - started
    records = [r for r in read_rows(Path(cfg.output_dir, "metrics.jsonl")) if "step_seconds" in r]
    times = [r["time"] for r in records]
    # Gap between step k-1's record and step k's: everything the loop does per step (step 1 has none,
    # and is a warm-up step anyway).
    loop = [float("nan")] + [times[i] - times[i - 1] for i in range(1, len(times))]
    result = rates([r["step_seconds"] for r in records], loop)
    phases = {key: mean_after_warmup([r[f"{key}_seconds"] for r in records]) for key in ("rollout", "score", "update", "sync")}
    return {
        **result,
        "phase_seconds": phases,  # per timed step; async: rollout is only the wait for the overlapped rollout
        "response_length": mean_after_warmup([r["response_length"] for r in records]),
        "final_reward_mean": records[-1]["reward_mean"],
        "summary_samples_per_s": summary["samples_per_s"],  # hone's own figure, warm-up steps included
        "wall_seconds": wall,  # run() end to end: Ray start, actors, eval before/after, export
        "threads": dict(HONE_THREADS),
        "rollout_engine": summary["rollout_engine"],
        "mismatch_logp_abs": mean_after_warmup([r["mismatch_logp_abs"] for r in records]),
    }


# ----------------------------------------------------------------------------------------------------
# TRL: GRPOTrainer in this process, timed by a callback


def trl_rewards() -> list[Any]:
    """hone's own built-in reward functions (rl/rewards.py), named so TRL logs them apart."""
    from hone.rl.rewards import exact_match, regex_match

    def letter_first(prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
        return regex_match(completions, LETTER_FIRST)

    def answer_match(prompts: list[str], completions: list[str], answer: list[str], **fields: Any) -> list[float]:
        return exact_match(completions, answer)

    return [letter_first, answer_match]


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.loop: list[float] = []
            self.logs: list[dict[str, Any]] = []
            self.started = self.last_end = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.seconds.append(now - self.started)
            self.loop.append(now - (self.last_end or self.started))
            self.last_end = now

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            self.logs.append(dict(logs or {}))

    return StepTimer()


def trl_config(workdir: Path, steps: int) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(workdir / "trl"),
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        steps_per_generation=GRAD_ACCUM,  # one generation of 64 samples per optimizer step, as hone
        num_generations=GROUP_SIZE,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        beta=0.0,
        num_iterations=1,
        epsilon=CLIP,
        loss_type="dapo",  # the whole generation batch's token mean: hone's token_mean
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        gradient_checkpointing=False,  # TRL turns it on by default; hone does not checkpoint
        bf16=False,
        fp16=False,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        seed=SEED,
    )


def run_trl(workdir: Path, steps: int, threads: int) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    train = datasets.Dataset.from_list(read_rows(workdir / "prompts.jsonl"))
    timer = step_timer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=trl_rewards(),
        args=trl_config(workdir, steps),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    started = time.perf_counter()
    trainer.train()
    logs = [entry for entry in timer.logs if "completions/mean_length" in entry]
    return {
        **rates(timer.seconds, timer.loop),
        "response_length": mean_after_warmup([entry["completions/mean_length"] for entry in logs]) if logs else None,
        "final_reward_mean": logs[-1].get("reward") if logs else None,
        "train_seconds": time.perf_counter() - started,
        "threads": {"torch": torch.get_num_threads()},
    }


def trl_threads(name: str) -> int:
    return 1 if name == "trl_1thread" else THREADS


def run_one(name: str, workdir: Path, steps: int) -> dict[str, Any]:
    if name.startswith("trl"):
        return run_trl(workdir, steps, trl_threads(name))
    return run_hone(workdir, name, steps)


# ----------------------------------------------------------------------------------------------------
# The parent: build once, run each configuration in its own process, print and save


def run_child(name: str, workdir: Path, steps: int) -> dict[str, Any]:
    """Re-invoke this script with --only NAME; its output goes to a log file, its result to JSON."""
    out, log = workdir / f"{name}.json", workdir / f"{name}.log"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    if name.startswith("trl"):
        env["OMP_NUM_THREADS"] = str(trl_threads(name))
    command = [sys.executable, __file__, "--only", name, "--workdir", str(workdir), "--steps", str(steps), "--out", str(out)]
    started = time.time()
    print(f"running {RUNS[name]:<16} ...", end=" ", flush=True)
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    load = os.getloadavg()[0]
    print(f"{time.time() - started:5.0f} s  (load average now {load:.1f})", flush=True)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"{RUNS[name]} failed (exit {code}); the end of its output:\n{tail}")
    return {**json.loads(out.read_text()), "load_average_after": load}


def ratios(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float | None, str]]:
    """(description, value, target or None, comparison)."""

    def rate(name: str) -> float:
        return results[name]["samples_per_s"]

    def median(name: str) -> float:
        return results[name]["median_samples_per_s"]

    def best(name: str) -> float:
        return results[name]["min_step_seconds"]

    vllm = [
        ("hone sync vllm / TRL samples/s", rate("hone_sync_vllm") / rate("trl"), 1.3, ">="),
        ("hone async vllm / sync vllm", rate("hone_async_vllm") / rate("hone_sync_vllm"), 1.2, ">="),
        ("hone sync vllm / hone sync hf", rate("hone_sync_vllm") / rate("hone_sync"), None, ""),
    ]
    return (vllm if "hone_sync_vllm" in results else []) + [
        ("hone sync / TRL samples/s", rate("hone_sync") / rate("trl"), 1.0, ">="),
        ("hone async / hone sync samples/s", rate("hone_async") / rate("hone_sync"), 1.0, ">"),
        ("hone async / TRL samples/s", rate("hone_async") / rate("trl"), None, ""),
        ("hone sync / TRL, medians", median("hone_sync") / median("trl"), None, ""),
        ("hone sync / TRL 1 thread samples/s", rate("hone_sync") / rate("trl_1thread"), None, ""),
        ("hone sync / TRL, best steps", best("trl") / best("hone_sync"), None, ""),
        ("hone async / hone sync, medians", median("hone_async") / median("hone_sync"), None, ""),
    ]


def met(value: float, target: float, comparison: str) -> bool:
    return value > target if comparison == ">" else value >= target


def format_report(results: dict[str, dict[str, Any]], steps: int) -> str:
    lines = [
        f"\nGRPO throughput, {steps} steps per run ({steps - WARMUP_STEPS} timed), {PROMPTS_PER_STEP} prompts x "
        f"group {GROUP_SIZE} = {SAMPLES_PER_STEP} samples/step, {MAX_NEW_TOKENS} new tokens, micro batch {MICRO_BATCH} "
        f"x accumulation {GRAD_ACCUM}, fp32",
        f"CPUs: hone policy {HONE_THREADS['policy']} + rollout {HONE_THREADS['rollout']} reserved (reward actor 0); sync: the roles "
        f"take turns, so each uses all {THREADS} cores' threads; async: 1 thread each; "
        f"TRL {results['trl']['threads']['torch']} (one process; 'TRL, 1 thread': 1); {THREADS} cores",
        f"{'run':<18}{'samples/s':>11}{'s/step':>9}{'loop s/step':>13}{'median s/step':>15}{'best s/step':>13}{'resp len':>10}{'wall s':>9}",
    ]
    for name, r in results.items():
        label = RUNS[name]
        wall = r.get("wall_seconds", r.get("train_seconds"))
        length = f"{r['response_length']:.1f}" if r.get("response_length") is not None else "n/a"
        lines.append(
            f"{label:<18}{r['samples_per_s']:>11.1f}{r['step_seconds']:>9.3f}{r['loop_step_seconds']:>13.3f}"
            f"{r['median_step_seconds']:>15.3f}{r['min_step_seconds']:>13.3f}"
            f"{length:>10}{wall:>9.0f}"
        )
    lines.append("(wall s: hone's whole run() incl. Ray start-up and eval; TRL's trainer.train())")
    lines.append("\nhone seconds per timed step, by phase (async: rollout = the wait for the overlapped rollout):")
    for name in (n for n in results if n.startswith("hone")):
        phases = results[name]["phase_seconds"]
        mismatch = f"   |logp rollout - trainer| {results[name]['mismatch_logp_abs']:.4f}"
        lines.append(f"  {RUNS[name]:<16}" + "   ".join(f"{key} {value:6.3f}" for key, value in phases.items()) + mismatch)
    lines.append("")
    for text, value, target, comparison in ratios(results):
        verdict = (
            "" if target is None else f"  (target {comparison} {target}: {'met' if met(value, target, comparison) else 'MISSED'})"
        )
        lines.append(f"{text:<34}{value:>6.2f}{verdict}")
    return "\n".join(lines)


def runs() -> list[str]:
    """Every run, the vLLM ones where the vllm package is installed (said once otherwise)."""
    from hone.training.generation import vllm_available

    if vllm_available():
        return list(RUNS)
    print("the vllm package is not installed: the hone vllm runs are left out (run this with .venv-vllm/bin/python)")
    return [name for name in RUNS if not name.endswith("_vllm")]


def warn_if_busy() -> None:
    load = os.getloadavg()[0]
    if load > THREADS / 2:
        print(f"warning: load average {load:.1f} on {THREADS} cores: other work will skew these numbers", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default 30; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run of the whole bench")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rl_throughput.json")
    parser.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 30)
    if args.steps <= WARMUP_STEPS + 1:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps plus one")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        args.out.write_text(json.dumps(run_one(args.only, args.workdir, args.steps)))
        return
    warn_if_busy()
    with tempfile.TemporaryDirectory(prefix="hone-rl-bench-") as tmp:
        workdir = Path(tmp)
        build_workdir(workdir)
        results = {name: run_child(name, workdir, args.steps) for name in runs()}
    print(format_report(results, args.steps))
    settings = {
        "steps": args.steps,
        "warmup_steps": WARMUP_STEPS,
        "group_size": GROUP_SIZE,
        "prompts_per_step": PROMPTS_PER_STEP,
        "samples_per_step": SAMPLES_PER_STEP,
        "max_new_tokens": MAX_NEW_TOKENS,
        "micro_batch": MICRO_BATCH,
        "grad_accum": GRAD_ACCUM,
        "lr": LR,
        "clip": CLIP,
        "kl_coef": 0.0,
        "cores": THREADS,
        "hone_cpus_per_actor": HONE_THREADS,
        "trl_torch_threads": {"trl": THREADS, "trl_1thread": 1},
        "model": "Llama hidden 256, 4 layers, 4 heads (2 kv), intermediate 512, fp32",
    }
    report = {
        "settings": settings,
        "runs": {name: {"label": RUNS[name], **result} for name, result in results.items()},
        "ratios": [
            {"ratio": text, "value": value, "target": target, "comparison": comparison}
            for text, value, target, comparison in ratios(results)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
