"""The rollout, reward and reference roles. Each is a plain class that ActorGroup turns into Ray actors;
each has a few coarse methods that take and return whole batches.

Weights reach rollout actors by version: every `generate` call names the version it needs and carries a
reference to those weights, so an actor that was restarted (and came back with base weights) catches up
on its own before generating, and a re-issued call gives the same samples.
"""

from __future__ import annotations

import os
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


def _load(cfg: HoneConfig, resolved: str, with_lora: bool) -> tuple[Any, Any]:
    from hone.training.models import add_lora, load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, resolved)
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    model = load_model(cfg.model, resolved, "causal")
    if with_lora:
        model = add_lora(model, cfg.lora, "causal")
    model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


class RolloutWorker(Located):
    def __init__(self, cfg: HoneConfig, resolved: str, add_special_tokens: bool) -> None:
        self.cfg = cfg
        _threads(self.cfg, self.cfg.rl.rollout.cpus, self.cfg.rl.rollout.num_workers)
        self.model, self.tokenizer = _load(self.cfg, resolved, self.cfg.lora.enabled)
        self.device = next(self.model.parameters()).device
        self.special = add_special_tokens
        self.version = 0  # base weights

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
        gen = self.cfg.rl.generation
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=self.special)
        prompt_ids = enc["input_ids"].repeat_interleave(group_size, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(group_size, dim=0)
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
        mask = completion_mask(completion_ids, self.tokenizer.eos_token_id)
        lengths = mask.sum(dim=1).tolist()
        texts = [self.tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(completion_ids, lengths, strict=True)]
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            completion_mask=mask,
            rollout_logp=token_logp(logits, completion_ids, gen.temperature) * mask,
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=texts,
            rows=[r for r in rows for _ in range(group_size)],
        )

    def _sync(self, weights: list[Any], version: int) -> None:
        if version == self.version:
            return
        import ray

        state = ray.get(weights[0])
        if self.cfg.lora.enabled:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, state)
        else:
            self.model.load_state_dict(state)
        self.version = version


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
