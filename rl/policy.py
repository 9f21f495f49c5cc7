"""The policy group: one DeepSpeed engine per actor, wired into one torch.distributed process group.

The controller hands each rank its shard of the step's batch; every rank splits it into micro-batches and
takes one optimizer step together (DeepSpeed averages gradients across ranks and accumulation steps).
Methods that touch sharded weights (weights, save, export) are collective: call them on every rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import time
from pathlib import Path
from typing import Any

from hone.rl.algorithms import kl_per_token, policy_loss, rollout_mismatch, truncated_is_weight
from hone.rl.batch import RolloutBatch
from hone.rl.workers import Located, cpu_threads
from hone.training.config import HoneConfig

CHECKPOINT_TAG = "policy"
# Update diagnostics that are per-token means: summed weighted by tokens here, divided by all ranks' tokens
# by the controller (mismatch_logp_max, a maximum, is kept apart).
MEAN_STATS = ("clip_fraction", "kl", "ratio_mean", "is_weight_mean", "mismatch_logp_abs", "mismatch_kl")


def free_address() -> tuple[str, int]:
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class PolicyWorker(Located):
    def __init__(self, cfg: HoneConfig, resolved: str, rank: int, world: int, total_steps: int) -> None:
        from hone.training.ds_config import import_deepspeed

        self.cfg = cfg
        import_deepspeed(self.cfg.scaling.use_gpu)
        import torch

        take_turns = not self.cfg.rl.async_rollout and not self.cfg.scaling.use_gpu
        torch.set_num_threads(cpu_threads(self.cfg.scaling.cpus_per_worker, world, take_turns))
        self.resolved, self.rank, self.world, self.total_steps = resolved, rank, world, total_steps
        self.engine: Any = None
        self.reference: Any = None  # ZeRO-3 full fine-tuning with a KL term: the frozen starting model

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(self, master: tuple[str, int]) -> dict[str, Any]:
        """Join the process group and build the engine; returns where this rank runs."""
        import ray
        import torch
        import torch.distributed as dist

        os.environ.update(
            {"MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "RANK": str(self.rank)}
            | {"WORLD_SIZE": str(self.world), "LOCAL_RANK": "0"}
        )
        backend = "nccl" if self.cfg.scaling.use_gpu and torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(seconds=self.cfg.scaling.collective_timeout_s)  # a hung rank fails the step
        dist.init_process_group(
            backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=self.rank, world_size=self.world, timeout=timeout
        )
        self.engine, self.tokenizer = self._build_engine()
        if self.cfg.rl.kl_coef > 0 and self.cfg.deepspeed.zero_stage == 3 and not self.cfg.lora.enabled:
            self.reference = self._build_reference()
        return {"rank": self.rank, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def where(self) -> dict[str, Any]:
        """Where this rank runs, and (ZeRO-3 reference) how many of the reference's parameters it holds only
        a partition of: the tests check it is every one."""
        out = super().where()
        if self.reference is not None:
            from hone.training.models import partitioned

            out["reference_params"], out["reference_params_partitioned"] = partitioned(self.reference.module)
        return out

    def _build_engine(self) -> tuple[Any, Any]:
        from hone.training.ds_config import engine_config, initialize_engine
        from hone.training.models import add_lora, enable_gradient_checkpointing, load_for_engine, load_tokenizer

        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.model, self.resolved, cfg.data.chat_template)
        model = load_for_engine(cfg.model, self.resolved, "causal", engine_config(cfg))
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if cfg.lora.enabled:
            model = add_lora(model, cfg.lora, "causal")
        samples_per_rank = cfg.rl.prompts_per_step * cfg.rl.group_size // self.world
        # One optimizer step per RL step: the rank's samples are its micro-batches.
        step_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, grad_accum=samples_per_rank // cfg.train.micro_batch_per_device)
        )
        return initialize_engine(model, step_cfg, self.total_steps), tokenizer

    def _build_reference(self) -> Any:
        """The starting model, frozen, loaded partitioned over the policy group as the policy is (ZeRO-3
        inference: each layer gathered for its forward pass), so the group holds 1/world of it per rank."""
        from hone.training.ds_config import inference_config, initialize_inference
        from hone.training.models import load_for_engine

        ds_config = inference_config(self.cfg)
        model = load_for_engine(self.cfg.model, self.resolved, "causal", ds_config)
        model.requires_grad_(False)
        engine = initialize_inference(model, self.cfg, ds_config)
        engine.eval()
        return engine

    def update(self, shard: RolloutBatch, totals: dict[str, float], off_policy: bool) -> dict[str, float]:
        """One optimizer step on this rank's shard; returns sums of the diagnostics (the controller adds ranks)."""

        from hone.rl.logprobs import completion_logits, entropy, token_logp

        started, rl, engine = time.perf_counter(), self.cfg.rl, self.engine
        lr = engine.get_lr()[0]
        engine.train()
        sums = {"loss": 0.0, "entropy": 0.0, "tokens": 0.0, "mismatch_logp_max": 0.0} | dict.fromkeys(MEAN_STATS, 0.0)
        micro = self.cfg.train.micro_batch_per_device
        for start in range(0, len(shard), micro):
            part = shard.select(slice(start, start + micro))
            mask = part.loss_mask().to(engine.device)
            logits = completion_logits(engine, part, engine.device)
            logp = token_logp(logits, part.completion_ids.to(engine.device), rl.generation.temperature)
            rollout_logp = part.rollout_logp.to(engine.device)
            # The ratio's old log-probs are the trainer's own (ratio 1, as TRL does with one iteration), and
            # the truncated IS weight corrects for the rollout engine's distribution, stale weights included.
            # Without it, async samples are corrected by the ratio against the rollout's log-probs instead.
            if rl.rollout_is_cap:
                old, is_weight = logp.detach(), truncated_is_weight(logp, rollout_logp, rl.rollout_is_cap)
            else:
                old, is_weight = (rollout_logp if off_policy else logp.detach()), None
            kl = kl_per_token(logp, part.ref_logp.to(engine.device), rl.kl_estimator) if part.ref_logp is not None else None
            loss, stats = policy_loss(
                logp,
                old,
                part.advantages.to(engine.device),  # type: ignore[union-attr]
                mask,
                clip_low=rl.clip_low,
                clip_high=rl.clip_high,
                kl=kl,
                kl_coef=rl.kl_coef,
                aggregation=rl.loss_aggregation,
                totals=totals,
                is_weight=is_weight,
            )
            stats |= rollout_mismatch(logp, rollout_logp, mask)
            stats["is_weight_mean"] = float(is_weight[mask.bool()].mean()) if is_weight is not None and mask.any() else 1.0
            # DeepSpeed divides by accumulation steps and averages ranks; undo both so the micro-batch
            # losses add up to the whole step's loss.
            engine.backward(loss * engine.gradient_accumulation_steps() * self.world)
            engine.step()
            tokens = float(mask.sum())
            sums["loss"] += float(loss.detach())
            sums["tokens"] += tokens
            sums["entropy"] += float((entropy(logits, rl.generation.temperature) * mask).sum())
            for key in MEAN_STATS:
                sums[key] += stats[key] * tokens
            sums["mismatch_logp_max"] = max(sums["mismatch_logp_max"], stats["mismatch_logp_max"])
        sums["update_seconds"] = time.perf_counter() - started
        sums["lr"] = lr
        return sums

    def reference_logp(self, shard: RolloutBatch) -> Any:
        """The starting model's token log-probs of this rank's shard, for the KL term (`reference_in_policy`):
        with LoRA the policy with its adapter switched off (peft's disable_adapter), the same base weights;
        under ZeRO-3 the partitioned frozen copy. Every rank runs the same forward passes (equal shards)."""
        from hone.rl.logprobs import completion_logp

        temperature, micro = self.cfg.rl.generation.temperature, self.cfg.train.micro_batch_per_device
        if self.reference is not None:
            return completion_logp(self.reference, shard, temperature, self.reference.device, micro)
        engine = self.engine
        engine.eval()
        with engine.module.disable_adapter():
            return completion_logp(engine, shard, temperature, engine.device, micro)

    def weights(self) -> list[Any]:
        """What rollout actors need, put in the object store by rank 0 as chunks of the state dict (about
        GATHER_CHUNK_BYTES each, in fp32; the rollout side loads one while the next is still in the store):
        the LoRA adapter alone when LoRA is on (a few MB), else every parameter. Collective under ZeRO-3,
        one chunk's parameters gathered at a time: no rank holds the whole model."""
        import ray
        import torch

        from hone.training.export import gathered_chunks

        chunks = gathered_chunks(
            self.engine.module, self.cfg.deepspeed.zero_stage, self.rank, self.cfg.lora.enabled, torch.float32
        )
        refs = [ray.put(chunk) for chunk in chunks]
        return refs if self.rank == 0 else []

    def save(self, folder: str) -> None:
        import torch

        self.engine.save_checkpoint(folder, tag=CHECKPOINT_TAG)
        # Dropout (LoRA's too) draws from torch's RNG: restored, a resumed run draws what an uninterrupted one would.
        torch.save(torch.get_rng_state(), Path(folder) / f"rng_rank{self.rank}.pt")

    def load(self, folder: str) -> None:
        import torch

        self.engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        rng = Path(folder) / f"rng_rank{self.rank}.pt"
        if rng.exists():  # a checkpoint from before hone saved it has none
            torch.set_rng_state(torch.load(rng, weights_only=True))  # plain tensors: never unpickle code

    def export(self, run_dir: str) -> None:
        from hone.training.export import export_model

        export_model(self.engine, self.cfg, self.resolved, "causal", Path(run_dir) / "model", self.tokenizer, self.rank)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.engine is not None:
            self.engine.destroy()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def reference_in_policy(cfg: HoneConfig) -> bool:
    """Whether the KL term's reference is computed by the policy group rather than by reference actors: with
    LoRA (the policy with its adapter off is the starting model: nothing more to hold) and under ZeRO-3 (a
    frozen copy partitioned like the policy, 1/world of it per rank, where one actor would need it whole)."""
    return cfg.lora.enabled or cfg.deepspeed.zero_stage == 3


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}"
