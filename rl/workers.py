"""The rollout, reward and reference roles. Each is a plain class that ActorGroup turns into Ray actors;
each has a few coarse methods that take and return whole batches.

Weights reach rollout actors by version: every `generate` call names the version it needs and carries a
reference to those weights, so an actor that was restarted (and came back with base weights) catches up
on its own before generating, and a re-issued call gives the same samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hone.rl.batch import RolloutBatch
from hone.rl.logprobs import completion_logp, completion_mask, token_logp
from hone.rl.rewards import RewardError, bad_values, builtin, call_reward, import_function, reward_name
from hone.training.config import HoneConfig


class Located:
    """Where an actor runs: the tests and the run summary read it to check placement."""

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def cpu_threads(cpus: float, num_workers: int, take_turns: bool) -> int:
    """Torch threads for an actor. By default its reserved CPUs (Ray sets OMP threads to match). In sync
    RL on CPU the roles take turns (generate, then score, then update), so while one works the others'
    cores sit idle: each role's actors may then share the whole machine."""
    reserved = max(1, int(cpus))
    if not take_turns:
        return reserved
    return max(reserved, (os.cpu_count() or 1) // max(1, num_workers))


def _threads(cfg: HoneConfig, cpus: float, num_workers: int) -> None:
    take_turns = not cfg.rl.async_rollout and not torch.cuda.is_available()
    torch.set_num_threads(cpu_threads(cpus, num_workers, take_turns))


def _tokenizer(cfg: HoneConfig, resolved: str) -> Any:
    from hone.training.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, resolved, cfg.data.chat_template)
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    return tokenizer


def _load(cfg: HoneConfig, resolved: str, with_lora: bool) -> tuple[Any, Any]:
    from hone.training.models import add_lora, load_model

    tokenizer = _tokenizer(cfg, resolved)
    model = load_model(cfg.model, resolved, "causal")
    if with_lora:
        model = add_lora(model, cfg.lora, "causal")
    model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


class RolloutWorker(Located):
    """Samples completions with the generation engine `generation.backend` names: vLLM (weights reloaded in
    place, or a LoRA adapter per version) or HF `generate` on a copy of the policy."""

    def __init__(self, cfg: HoneConfig, resolved: str, add_special_tokens: bool) -> None:
        from hone.training.generation import vllm_engine

        self.cfg = cfg
        _threads(self.cfg, self.cfg.rl.rollout.cpus, self.cfg.rl.rollout.num_workers)
        self.special = add_special_tokens
        self.version = 0  # base weights
        lora_rank = cfg.lora.rank if cfg.lora.enabled else 0
        self.vllm = vllm_engine(
            cfg.generation.backend, resolved, tempered_logprobs=True, lora_rank=lora_rank, add_special_tokens=add_special_tokens
        )
        if self.vllm is not None:
            self.tokenizer = _tokenizer(self.cfg, resolved)
            self.adapters = Path(tempfile.mkdtemp(prefix="hone-adapter-"))  # one folder per weight version
        else:
            self.model, self.tokenizer = _load(self.cfg, resolved, self.cfg.lora.enabled)
            self.device = next(self.model.parameters()).device

    def engine(self) -> str:
        return "vllm" if self.vllm is not None else "hf"

    def generate(
        self,
        prompts: list[str],
        rows: list[dict[str, Any]],
        group_size: int,
        seed: int,
        greedy: bool,
        weights: list[Any],
        version: int,
    ) -> RolloutBatch:
        """`group_size` completions per prompt, adjacent, with their tokens and rollout log-probs."""
        self._sync(weights, version)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=self.special)
        prompt_ids = enc["input_ids"].repeat_interleave(group_size, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(group_size, dim=0)
        sample = self._sample_vllm if self.vllm is not None else self._sample_hf
        completion_ids, mask, rollout_logp = sample(prompts, prompt_ids, prompt_mask, group_size, seed, greedy)
        lengths = mask.sum(dim=1).tolist()
        texts = [self.tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(completion_ids, lengths, strict=True)]
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=mask,
            rollout_logp=rollout_logp * mask,
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=texts,
            rows=[r for r in rows for _ in range(group_size)],
        )

    def _sample_hf(
        self, prompts: list[str], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int, seed: int, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = self.cfg.rl.generation
        torch.manual_seed(seed)
        sampling = {} if greedy else {"temperature": gen.temperature, "top_p": gen.top_p, "top_k": 0}
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt_ids.to(self.device),
                attention_mask=prompt_mask.to(self.device),
                max_new_tokens=gen.max_new_tokens,
                do_sample=not greedy,
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        completion_ids = out.sequences[:, prompt_ids.size(1) :].cpu()
        logits = torch.stack(out.logits, dim=1).cpu()
        return (
            completion_ids,
            completion_mask(completion_ids, self.tokenizer.eos_token_id),
            token_logp(logits, completion_ids, gen.temperature),
        )

    def _sample_vllm(
        self, prompts: list[str], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int, seed: int, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """vLLM's log-probs are taken after temperature and top-p, so they are the probabilities the tokens
        were drawn with (the trainer's token_logp applies the same temperature)."""
        from hone.training.generation import Sampling

        assert self.vllm is not None
        gen = self.cfg.rl.generation
        sampling = Sampling(
            max_new_tokens=gen.max_new_tokens,
            temperature=0.0 if greedy else gen.temperature,
            top_p=gen.top_p,
            seed=seed,
            logprobs=True,
        )
        outs = self.vllm.generate([p for p in prompts for _ in range(group_size)], sampling)
        width = max(1, max(len(c.token_ids) for c in outs))
        ids = torch.full((len(outs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        logp, mask = torch.zeros(len(outs), width), torch.zeros(len(outs), width, dtype=torch.long)
        for i, c in enumerate(outs):  # the mask is each completion's own length: vLLM may stop on any stop token
            n = len(c.token_ids)
            ids[i, :n], logp[i, :n], mask[i, :n] = torch.tensor(c.token_ids), torch.tensor(c.logprobs or [0.0] * n), 1
        return ids, mask, logp

    def _sync(self, weights: list[Any], version: int) -> None:
        """Bring this actor to weight version `version`: `weights` are object refs to chunks of the policy's
        state dict (the LoRA adapter alone when LoRA is on), fetched one at a time."""
        if version == self.version:
            return
        import ray

        chunks = (ray.get(ref) for ref in weights)
        if self.cfg.lora.enabled:
            adapter = {k: v for chunk in chunks for k, v in chunk.items()}  # an adapter is small
            if self.vllm is not None:
                self._use_adapter(adapter, version)
            else:
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.model, adapter)
        elif self.vllm is not None:
            self.vllm.load_weights(pair for chunk in chunks for pair in chunk.items())
        else:
            _load_chunks(self.model, chunks)
        self.version = version

    def _use_adapter(self, adapter: dict[str, torch.Tensor], version: int) -> None:
        """Save the adapter as a PEFT folder vLLM can read, and generate with it from now on. The target
        modules are read off the weights' own names, so peft's "all-linear" needs no model to resolve."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        assert self.vllm is not None
        folder = self.adapters / f"v{version}"
        targets = sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in adapter})
        config = LoraConfig(r=self.cfg.lora.rank, lora_alpha=self.cfg.lora.alpha, target_modules=targets, task_type="CAUSAL_LM")
        config.save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(folder / "adapter_model.safetensors"))
        self.vllm.use_adapter(str(folder), version)
        for old in self.adapters.glob("v*"):  # vLLM has read what it needs of the older ones
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)


def _load_chunks(model: torch.nn.Module, chunks: Any) -> None:
    """Load a state dict that arrives in pieces; every parameter must come, and nothing unknown."""
    expected, seen = {name for name, _ in model.named_parameters()}, set()
    for chunk in chunks:
        unexpected = model.load_state_dict(chunk, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"weight sync sent parameters the rollout model does not have: {unexpected[:5]}")
        seen |= chunk.keys()
    if expected - seen:
        raise RuntimeError(f"weight sync did not send {sorted(expected - seen)[:5]}")


class ReferenceWorker(Located):
    """The frozen starting policy, for the KL penalty."""

    def __init__(self, cfg: HoneConfig, resolved: str) -> None:
        self.cfg = cfg
        _threads(self.cfg, self.cfg.rl.reference.cpus, self.cfg.rl.reference.num_workers)
        self.model, _ = _load(self.cfg, resolved, with_lora=False)
        self.device = next(self.model.parameters()).device

    def logp(self, batch: RolloutBatch) -> torch.Tensor:
        chunk = self.cfg.train.micro_batch_per_device
        return completion_logp(self.model, batch, self.cfg.rl.generation.temperature, self.device, chunk)


class RewardWorker(Located):
    """Scores completions with every configured reward: rules, user functions and reward models."""

    def __init__(self, cfg: HoneConfig) -> None:
        self.cfg = cfg
        _threads(self.cfg, self.cfg.rl.reward.cpus, self.cfg.rl.reward.num_workers)
        self.scorers: dict[str, Any] = {}
        for i, spec in enumerate(self.cfg.rl.rewards):
            name = reward_name(spec)
            if spec.type == "function":
                self.scorers[name] = import_function(spec, f"rl.rewards[{i}]", [spec.path] if spec.path else [])
            elif spec.type == "model":
                from hone.rl.reward_model import RewardModel

                self.scorers[name] = RewardModel(spec.source, self.cfg.eval.batch_size)
            else:
                self.scorers[name] = builtin(spec)

    def score(
        self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]], lengths: list[int]
    ) -> tuple[dict[str, list[float]], list[tuple[int, str]]]:
        """Each reward's raw values (NaN where a value was bad), and the bad values described."""
        keys = sorted({k for r in rows for k in r} - {"_source", "prompt"})
        fields: dict[str, list[Any]] = {k: [r.get(k) for r in rows] for k in keys}
        fields["completion_lengths"] = lengths
        parts, bad = {}, []
        for name, fn in self.scorers.items():
            try:
                values = call_reward(name, fn, prompts, completions, fields)
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err}") from err
            problems = bad_values(name, values, prompts, completions)
            broken = {i for i, _ in problems}
            parts[name] = [float("nan") if i in broken else float(v) for i, v in enumerate(values)]
            bad += problems
        return parts, bad
