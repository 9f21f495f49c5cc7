"""A generator from a local model (a directory, a .gguf file or a hub id), as a pool of Ray actors so that
synthesis spreads across the cluster like training does: prompts are dealt out in shards, one per actor.

HF `generate` for now; the generation engine of issue 14 (vLLM where it runs) replaces `_complete`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hone.training.config import ModelConfig


@dataclass(frozen=True)
class LocalSettings:
    source: str  # resolved: a model directory or hub id
    max_new_tokens: int = 384
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 8
    seed: int = 0
    dtype: str = "bfloat16"  # generation only: bf16 halves the memory and is faster on CPUs with AMX


class Completer:
    """One model, answering chat prompts (each a single user turn) in batches."""

    def __init__(self, settings: LocalSettings, threads: int = 0) -> None:
        import torch

        from hone.training.models import load_model, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.s = settings
        model_cfg = ModelConfig(source=settings.source)
        self.tokenizer = load_tokenizer(model_cfg, settings.source)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
        self.model = load_model(model_cfg, settings.source, "causal", dtype=getattr(torch, settings.dtype)).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")

    def complete(self, prompts: list[str], seed: int) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.s.batch_size):
            out += self._complete(prompts[start : start + self.s.batch_size], seed + start)
        return out

    def _complete(self, prompts: list[str], seed: int) -> list[str]:
        import torch

        tok = self.tokenizer
        if tok.chat_template:
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        else:
            texts = prompts
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template).to(self.model.device)
        torch.manual_seed(seed)  # a rerun of the same shard samples the same replies
        sampling: dict[str, Any] = {"do_sample": False}
        if self.s.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.s.temperature, "top_p": self.s.top_p}
        with torch.no_grad():
            ids = self.model.generate(**enc, max_new_tokens=self.s.max_new_tokens, pad_token_id=tok.pad_token_id, **sampling)
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


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
