"""The per-worker training loop, shared by pretrain, sft, dpo and reward: one explicit loop on the DeepSpeed
engine. dpo and reward differ only in their batches (pairs) and loss (training/forward.py:step_loss_sum).

Each Ray Train worker runs `train_worker(plan)`:

    resume? -> for each step: grad_accum x (batch -> engine(batch) -> engine.backward(loss) -> engine.step())
            -> log -> eval every N -> checkpoint every K -> export model/ at the end

The driver (cluster/train_run.py) builds the `TrainPlan`: the config, the tokenized examples (the token
cache's files, which each worker memory-maps, or where the nodes share no filesystem a copy in the object
store), and a handle to the run log actor that receives rank 0's per-step metrics.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.training.batches import apply_mlm_masking, collate, collate_pairs, example_indices
from hone.training.config import HoneConfig
from hone.training.data import PREFERENCE_MODES
from hone.training.ds_config import cpu_autocast, engine_config, import_deepspeed, initialize_engine
from hone.training.evaluate import heldout_loss
from hone.training.forward import step_loss_sum, step_target_count
from hone.training.handoff import dereference
from hone.training.shards import Shard
from hone.training.token_cache import TokenTable
from hone.training.tokens import Example


@dataclass(frozen=True)
class TrainPlan:
    """Everything a Ray Train worker gets from the driver."""

    config: HoneConfig
    resolved_model: str  # the local model directory the run starts from (a converted GGUF, a hub download)
    kind: str  # the model's head: causal, masked or reward
    train_examples: Any  # the tokenized train examples: a TokenTable (mapped from the cache), or its ObjectRef
    eval_examples: Any  # ... and the held-out ones
    logger: Any  # the RunLog actor: rank 0's per-step metrics, every worker's info
    run_dir: str
    total_steps: int
    start_from: str | None = None  # a checkpoint folder to start from when the run has none (PBT's clone)
    stored_in: str | None = None  # the checkpoint folder, when on a filesystem: where commit markers go
    committed: str | None = None  # a complete checkpoint Ray had not registered, newer than its last
    steps_per_epoch: int = 0


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's train_func; `loop_config` is `by_reference({"plan": TrainPlan})` (training/handoff.py)."""
    started = time.perf_counter()
    plan: TrainPlan = dereference(loop_config)["plan"]
    cfg = plan.config
    import_deepspeed(cfg.scaling.use_gpu)
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    from hone.training.checkpoints import load_checkpoint, save_checkpoint
    from hone.training.export import export_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    train_examples, eval_examples = (
        x if isinstance(x, TokenTable) else ray.get(x) for x in (plan.train_examples, plan.eval_examples)
    )
    engine, tokenizer = _build_engine(plan)
    logger = plan.logger
    logger.worker.remote(_worker_info(engine, cfg, rank))

    step, saved = load_checkpoint(engine, ray.train.get_checkpoint(), rank, plan.start_from, cfg, plan.committed)
    window: list[dict[str, Any]] = []  # rank 0's metrics since the last checkpoint; the next one carries them
    if rank == 0:
        print(f"hone: {world} worker(s) ready in {time.perf_counter() - started:.1f} s, starting at step {step}", flush=True)
        if saved:
            logger.replay.remote(saved)
    total = plan.total_steps
    batcher = _Batcher(cfg, plan.kind, tokenizer, train_examples, rank, world)
    clock = _CheckpointClock(cfg, logger, rank)
    train_peak: float | None = None  # the peak RSS of the steps, without the export's (a stopped run has none)
    while step < total:
        started, lr = time.perf_counter(), engine.get_lr()[0]  # the LR this step trains with
        loss_sum, num_loss_tokens, num_tokens, num_real, norm = _train_step(engine, batcher, step, plan.kind)
        step += 1
        # Rank 0's clock rides on the step's all-reduce, so every rank takes the same decisions.
        *stats, due, stop, poll = Shard(rank, world).sum(loss_sum, num_loss_tokens, num_tokens, num_real, *clock.flags())
        # Ray's notice that a node of this run is being reclaimed (a barrier: every rank asks together).
        preempted = bool(poll) and ray.train.get_preemption_info() is not None
        seconds = time.perf_counter() - started
        metrics = {
            "step": step,
            "loss": stats[0] / max(stats[1], 1),
            "lr": lr,
            "tokens": int(stats[2]),
            "real_tokens": int(stats[3]),
            "tokens_per_s": stats[2] / seconds,
            "real_tokens_per_s": stats[3] / seconds,
            "step_seconds": seconds,
        }
        if norm is not None:  # before clipping, of the whole step's gradient
            metrics["grad_norm"] = norm
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < total:
            engine.eval()
            metrics["eval_loss"] = heldout_loss(engine, tokenizer, eval_examples, cfg, plan.kind, Shard(rank, world))
        if rank == 0:
            logger.record.remote(metrics)
            window.append(metrics)
        if _epoch_ends(cfg, plan, step):
            epoch_dir = Path(plan.run_dir) / EPOCHS / str(step // plan.steps_per_epoch)
            export_model(engine, cfg, plan.resolved_model, plan.kind, epoch_dir, tokenizer, rank)
        if step == total or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0) or due or stop or preempted:
            save_checkpoint(engine, step, rank, metrics, plan.run_dir, plan.stored_in, window)
            clock.saved()
            window = []
        elif "eval_loss" in metrics:
            ray.train.report(metrics)
        if stop:  # the driver was asked to stop: the checkpoint above is where a rerun resumes
            if rank == 0:
                print(f"hone: stopped at step {step} as asked, after saving its checkpoint", flush=True)
            break
    else:
        train_peak = _peak_rss_mb()  # before the export, for which rank 0 holds the weights in the base dtype
        export_model(engine, cfg, plan.resolved_model, plan.kind, Path(plan.run_dir) / "model", tokenizer, rank)
    info = {**_worker_info(engine, cfg, rank), "peak_rss_mb": _peak_rss_mb(), "train_peak_rss_mb": train_peak}
    logger.worker.remote(info)
    engine.destroy()
    dist.barrier()
    dist.destroy_process_group()


EPOCHS = "epochs"  # run_dir/epochs/<n>/: the model after epoch n, with train.keep_epoch_models


def _epoch_ends(cfg: HoneConfig, plan: TrainPlan, step: int) -> bool:
    """An epoch (not the last: that one is model/) ended with this step, and its model is to be kept."""
    return (
        cfg.train.keep_epoch_models and plan.steps_per_epoch > 0 and step % plan.steps_per_epoch == 0 and step < plan.total_steps
    )


def _build_engine(plan: TrainPlan) -> tuple[Any, Any]:
    from hone.training.models import (
        add_embedding_noise,
        add_lora,
        compile_blocks,
        enable_gradient_checkpointing,
        load_for_engine,
        load_tokenizer,
    )

    cfg = plan.config
    tokenizer = load_tokenizer(cfg.model, plan.resolved_model, cfg.data.chat_template)
    model = load_for_engine(cfg.model, plan.resolved_model, plan.kind, engine_config(cfg))
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.lora.enabled:
        model = add_lora(model, cfg.lora, plan.kind)
    if cfg.train.neftune_alpha:
        add_embedding_noise(model, cfg.train.neftune_alpha)
    if cfg.train.compile:
        compile_blocks(model)
    return initialize_engine(model, cfg, plan.total_steps), tokenizer


class _CheckpointClock:
    """Rank 0's view of when to checkpoint besides every_steps: every_minutes of training since the last
    one, and the driver's stop request (read from the run log at most once a second); plus when to ask
    Ray about preemption (a barrier, so at most every few seconds). Other ranks contribute zeros."""

    POLL_S = 5.0

    def __init__(self, cfg: HoneConfig, logger: Any, rank: int) -> None:
        self.every_s, self.logger, self.rank = cfg.checkpoint.every_minutes * 60, logger, rank
        self.last_save = self.last_stop_check = self.last_poll = time.monotonic()
        self.stop = False

    def flags(self) -> tuple[float, float, float]:
        if self.rank != 0:
            return 0.0, 0.0, 0.0
        import ray

        now = time.monotonic()
        if not self.stop and now - self.last_stop_check >= 1.0:
            self.stop, self.last_stop_check = bool(ray.get(self.logger.stop_requested.remote())), now
        due = bool(self.every_s) and now - self.last_save >= self.every_s
        poll = now - self.last_poll >= self.POLL_S
        if poll:
            self.last_poll = now
        return float(due), float(self.stop), float(poll)

    def saved(self) -> None:
        self.last_save = time.monotonic()


class _Batcher:
    """This rank's micro-batches, as tensors on the engine's device."""

    def __init__(self, cfg: HoneConfig, kind: str, tokenizer: Any, examples: Sequence[Example], rank: int, world: int):
        self.cfg, self.tokenizer, self.examples, self.rank, self.world = cfg, tokenizer, examples, rank, world
        self.masked = kind == "masked"
        self.pairs = cfg.mode in PREFERENCE_MODES

    def get(self, step: int, micro: int, device: Any) -> dict[str, Any]:
        t = self.cfg.train
        ids = example_indices(
            step, micro, self.rank, len(self.examples), self.cfg.seed, t.micro_batch_per_device, t.grad_accum, self.world
        )
        chosen = [self.examples[i] for i in ids]
        batch = collate_pairs(chosen, self.tokenizer.pad_token_id) if self.pairs else collate(chosen, self.tokenizer.pad_token_id)
        if self.masked:
            seed = hash((self.cfg.seed, step, micro, self.rank)) & 0x7FFFFFFF
            batch = apply_mlm_masking(
                batch, self.cfg.data.mlm_probability, self.tokenizer.mask_token_id, len(self.tokenizer), seed
            )
        return {k: v.to(device) for k, v in batch.items()}


def _train_step(engine: Any, batcher: _Batcher, step: int, kind: str) -> tuple[float, int, int, int, float | None]:
    """One optimizer step over this rank's `grad_accum` micro-batches. Its loss is the sum over every target
    of the global batch (all micro-batches, all ranks) divided by their global count, so rows of different
    lengths weigh the same however the batch is split: each rank first counts its targets, one all-reduce
    gives the global count, and each micro-batch's summed loss is divided by it. DeepSpeed then divides by
    the accumulation steps and averages ranks; the scale undoes both (as transformers' num_items_in_batch)."""
    import torch.distributed as dist

    cfg = batcher.cfg
    loss_total, loss_tokens, tokens, real = 0.0, 0, 0, 0
    engine.train()
    batches = [batcher.get(step, micro, engine.device) for micro in range(cfg.train.grad_accum)]
    local = sum(step_target_count(b, kind, cfg.mode) for b in batches)
    (count,) = Shard(dist.get_rank(), dist.get_world_size()).sum(float(local))
    # Written as one division: with one rank and no accumulation it is exactly the micro-batch mean.
    denominator = max(count, 1.0) / (cfg.train.grad_accum * dist.get_world_size())
    norm = None
    for micro, batch in enumerate(batches):
        real += int(batch.pop("num_real_tokens"))
        tokens += batch["input_ids"].numel()
        with cpu_autocast(cfg):
            loss_sum, n = step_loss_sum(engine, batch, kind, cfg)
        engine.backward(loss_sum / denominator)
        if micro == len(batches) - 1 and engine.zero_optimization_stage() == 0:
            norm = _grad_norm(engine)  # ZeRO 1-3 keep their own (get_global_grad_norm); stage 0 does not
        engine.step()
        loss_total += float(loss_sum.detach())
        loss_tokens += int(n)
    if norm is None:
        global_norm = engine.get_global_grad_norm()
        norm = None if global_norm is None else float(global_norm)
    return loss_total, loss_tokens, tokens, real, norm


def _grad_norm(engine: Any) -> float:
    """The 2-norm of the step's gradient, before clipping. Without ZeRO, DeepSpeed has already averaged the
    gradients across ranks at the accumulation boundary's backward, so every rank holds the global one."""
    import torch

    grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM, where there is one: getrusage's ru_maxrss carries over the
    peak of the process that exec'd this one (a Ray worker's, or a bench's parent that built a model)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB (macOS bytes)


def _worker_info(engine: Any, cfg: HoneConfig, rank: int) -> dict[str, Any]:
    """Where this worker runs and how its parameters are held: ZeRO-3 leaves partitioned ones with
    local numel 0, which the tests use to prove sharding happened."""
    import ray
    import torch

    from hone.training.models import compiled_blocks, hf_model, partitioned

    num_params, held_in_part = partitioned(engine.module)
    return {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "zero_stage": cfg.deepspeed.zero_stage,
        "num_params": num_params,
        "num_params_local_empty": held_in_part,
        "torch_threads": torch.get_num_threads(),
        "compiled_blocks": compiled_blocks(engine.module),
        "niceness": os.nice(0),
        # what the model really runs with, from the model itself (the tests check the switches took)
        "gradient_checkpointing": bool(getattr(hf_model(engine.module), "is_gradient_checkpointing", False)),
        "attn_implementation": getattr(hf_model(engine.module).config, "_attn_implementation", None),
    }
