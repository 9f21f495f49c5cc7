"""A generator from a local model (a directory, a .gguf file or a hub id), as a pool of Ray actors so that
synthesis spreads across the cluster like training does: prompts are dealt out in shards, one per actor.
Each actor generates through hone's generation engine (`hf`, or `vllm` where it is installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hone.training.generation import Backend, Sampling, make_engine


@dataclass(frozen=True)
class LocalSettings:
    source: str  # resolved: a model directory or hub id
    max_new_tokens: int = 384
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8
    seed: int = 0
    dtype: str = "bfloat16"  # generation only: bf16 halves the memory and is faster on CPUs with AMX
    backend: Backend = "auto"


class Completer:
    """One model, answering chat prompts (each a single user turn) in batches."""

    def __init__(self, settings: LocalSettings, threads: int = 0) -> None:
        self.s = settings
        self.engine = make_engine(settings.backend, settings.source, settings.dtype, threads, settings.batch_size)

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        tok = self.engine.tokenizer
        if tok.chat_template:
            prompts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        sampling = Sampling(self.s.max_new_tokens, self.s.temperature, self.s.top_p, seed)
        return [c.text for c in self.engine.generate(prompts, sampling)]


class LocalPool:
    """`num_workers` Completer actors. `generate` deals the prompts out in contiguous shards and returns
    the replies in prompt order."""

    def __init__(self, settings: LocalSettings, num_workers: int, cpus: float, gpus: float) -> None:
        import ray

        threads = max(int(cpus), 1)
        actor: Any = ray.remote(num_cpus=cpus, num_gpus=gpus)(Completer)
        self.actors: list[Any] = [actor.remote(settings, threads) for _ in range(num_workers)]
        self.calls = 0

    def generate(self, prompts: list[str]) -> list[str]:
        import ray

        n = len(self.actors)
        size = -(-len(prompts) // n)
        shards = [(i * size, prompts[i * size : (i + 1) * size]) for i in range(n)]
        self.calls += 1
        refs = [
            a.complete.remote(shard, self.calls * 1_000_003 + start)
            for a, (start, shard) in zip(self.actors, shards, strict=True)
            if shard
        ]
        return [reply for replies in ray.get(refs) for reply in replies]

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
