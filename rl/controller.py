"""`mode: rl`: the single controller. It reads like the algorithm:

    for each step:  generate (rollout actors) -> score (reward actors) -> advantages (a pure function)
                    -> reference log-probs (when kl_coef > 0: reference actors, or the policy group with
                       LoRA or ZeRO-3) -> update (policy group)
                    -> send the new weights to the rollout actors

Started by `hone run rl.yaml` (cluster/rl_run.py owns the run dir, tracking and the progress bar).
A rollout, reward or reference actor that dies is restarted by Ray and its shard of the step is issued
again (same prompts, same seed, so the step is neither lost nor counted twice). A dead policy worker
takes the group down; it is rebuilt from the last checkpoint, `scaling.max_failures` times at most.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError
from tqdm.auto import tqdm

from hone.rl.algorithms import fill_invalid, group_advantages
from hone.rl.batch import RolloutBatch, concat
from hone.rl.group import ActorGroup, RolePlacementError, role_bundle
from hone.rl.policy import MEAN_STATS, PolicyWorker, checkpoint_path, reference_in_policy
from hone.rl.prepare import PreparedRl
from hone.rl.rewards import RewardError, reward_name
from hone.rl.workers import ReferenceWorker, RewardWorker, RolloutWorker
from hone.training.config import HoneConfig
from hone.training.errors import HoneError
from hone.training.files import write_json, write_text

COMMITTED = "COMMITTED"
# Ray restarts a crashed rollout/reward/reference actor this many times before the run gives up.
ACTOR_RESTARTS = 3
PLACEMENT_FIX = "lower the role's num_workers/cpus/gpus, drop its custom resources, or add nodes"


class RlRunError(HoneError, RuntimeError):
    """An RL run that cannot go on (an actor that keeps dying or never answers); the message says which and why."""


# What lowers a role's memory, for the message when Ray's memory monitor (or the kernel) killed its actor.
MEMORY_FIXES = {
    "rollout": "lower rl.generation.max_new_tokens or rl.prompts_per_step, or give rl.rollout more memory",
    "reward": "give rl.reward more memory, or make the reward function use less",
    "reference": "lower train.micro_batch_per_device, or give rl.reference more memory",
    "policy": "lower train.micro_batch_per_device or data.max_seq_len, or raise deepspeed.zero_stage",
}


def why_it_died(err: BaseException, role: str) -> str:
    """Why Ray says an actor died, in a few words with the fix, from its error's text: an out-of-memory
    kill repeats on every restart (same prompts, same seed), so it must be named, not just retried."""
    text = str(err)
    if "low on memory" in text or "OutOfMemory" in text or "oom" in text.lower().split():
        return f"killed for using too much memory: {MEMORY_FIXES.get(role, 'give it more memory')}"
    if getattr(err, "preempted", False):
        return "its node was preempted"
    detail = [line.strip() for line in text.splitlines() if "exit detail" in line.lower()]
    return detail[0] if detail else type(err).__name__


class PolicyDied(RuntimeError):
    """A policy worker died; the group restarts from the last checkpoint."""


@dataclass
class Roles:
    policy: ActorGroup
    rollout: ActorGroup
    reward: ActorGroup
    reference: ActorGroup | None

    def all(self) -> dict[str, ActorGroup]:
        groups = {"policy": self.policy, "rollout": self.rollout, "reward": self.reward}
        return groups | ({"reference": self.reference} if self.reference else {})

    def stop(self) -> None:
        for group in self.all().values():
            group.stop()


def reserve_roles(cfg: HoneConfig) -> Roles:
    """Reserve every role's placement group (bounded wait each) before anything starts or is written."""
    rl, s = cfg.rl, cfg.scaling
    policy_bundle = role_bundle(s.cpus_per_worker, s.gpus_per_worker if s.use_gpu else 0, rl.policy_resources)
    roles = Roles(
        policy=ActorGroup("policy", s.num_workers, policy_bundle, s.placement_strategy),
        rollout=ActorGroup(
            "rollout", rl.rollout.num_workers, role_bundle(rl.rollout.cpus, rl.rollout.gpus, rl.rollout.resources)
        ),
        reward=ActorGroup("reward", rl.reward.num_workers, role_bundle(rl.reward.cpus, rl.reward.gpus, rl.reward.resources)),
        reference=None,
    )
    if rl.kl_coef > 0 and not reference_in_policy(cfg):  # else the policy group computes it (_reference)
        ref = rl.reference
        roles.reference = ActorGroup("reference", ref.num_workers, role_bundle(ref.cpus, ref.gpus, ref.resources))
    _check_total_demand(roles)
    try:
        for group in roles.all().values():
            group.reserve(s.placement_timeout_s, PLACEMENT_FIX)
    except Exception:
        roles.stop()
        raise
    return roles


class Controller:
    def __init__(
        self,
        cfg: HoneConfig,
        prepared: PreparedRl,
        run_dir: Path,
        roles: Roles,
        log: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg, self.prepared, self.run_dir, self.roles, self.log = cfg, prepared, run_dir, roles, log
        self.should_stop = should_stop  # asked between steps; True: checkpoint, then stop (SIGTERM, Ctrl-C)
        self.stopped_at: int | None = None
        self.version = 0  # version 0: the base weights every actor starts with
        self.weights: list[Any] = []
        self.restarts = {"rollout": 0, "reward": 0, "reference": 0, "policy": 0}
        self.pool = list(range(len(prepared.train_prompts)))  # the train prompts the steps draw from (rl.focus)

    # ------------------------------------------------------------------------------------------------
    # The run

    def start(self) -> None:
        """Start every role's actors; then `evaluate()` and `run()` can be called."""
        self._start_workers()
        self.rollout_engine = self.roles.rollout.call_all("engine")[0]
        print(f"hone: rollout engine: {self.rollout_engine} (generation.backend {self.cfg.generation.backend})", flush=True)
        self._start_policy()

    def run(self, before: dict[str, float]) -> dict[str, Any]:
        """Train (resuming from the last checkpoint), evaluate, export; `before` is the base policy's evaluation.
        A run asked to stop returns {"stopped_at": step} once that step's checkpoint is saved."""
        self.pool = self._focus()
        self._train_with_recovery()
        if self.stopped_at is not None:
            return {"stopped_at": self.stopped_at}
        print("hone: evaluating the trained policy ...", flush=True)
        after = self.evaluate()
        self.roles.policy.call_all("export", str(self.run_dir))
        placement = {name: group.call_all("where") for name, group in self.roles.all().items()}
        self.roles.policy.call_all("shutdown")
        return {
            "before": before,
            "after": after,
            "placement": placement,
            "restarts": self.restarts,
            "engine": self.rollout_engine,
        }

    def _train_with_recovery(self) -> None:
        for attempt in range(self.cfg.scaling.max_failures + 1):
            try:
                self._train(self._resume())
                return
            except PolicyDied as err:
                if attempt == self.cfg.scaling.max_failures:
                    raise RlRunError(f"the policy group failed {attempt + 1} times (scaling.max_failures): {err}") from err
                self.restarts["policy"] += 1
                print(f"hone: {err}; restarting the policy group from the last checkpoint", flush=True)
                self.roles.policy.stop_actors()
                self._start_policy()

    def _train(self, step: int) -> None:
        total, asynchronous = self.prepared.total_steps, self.cfg.rl.async_rollout
        self.last_save = time.monotonic()
        pending = self._launch_rollout(step) if step < total else []
        while step < total:
            started = time.perf_counter()
            batch = concat(self._collect(self.roles.rollout, pending))
            rollout_s = time.perf_counter() - started
            if asynchronous and step + 1 < total:
                pending = self._launch_rollout(step + 1)  # generates while this step updates: one step stale
            batch, parts, score_s = self._score(batch)
            batch.advantages = self._advantages(batch)
            ref_s = self._reference(batch)
            stats = self._update(batch, off_policy=asynchronous)
            sync_s = self._sync()
            step += 1
            if not asynchronous and step < total:
                pending = self._launch_rollout(step)
            seconds = time.perf_counter() - started
            timings = {"rollout": rollout_s, "score": score_s, "reference": ref_s, "sync": sync_s, "step": seconds}
            self.log(self._metrics(step, batch, parts, stats, timings))
            every, minutes = self.cfg.checkpoint.every_steps, self.cfg.checkpoint.every_minutes
            due = bool(minutes) and time.monotonic() - self.last_save >= minutes * 60
            stop = self.should_stop()
            if step == total or (every and step % every == 0) or due or stop:
                self._save(step)
                self.last_save = time.monotonic()
            if stop:
                self.stopped_at = step
                return

    # ------------------------------------------------------------------------------------------------
    # Roles

    def _start_workers(self) -> None:
        p = self.prepared
        env = _env(self.cfg)
        self.roles.rollout.start(
            RolloutWorker,
            [(self.cfg, p.resolved_model, p.add_special_tokens)] * self.roles.rollout.num_actors,
            ACTOR_RESTARTS,
            env,
        )
        self.roles.reward.start(RewardWorker, [(self.cfg,)] * self.roles.reward.num_actors, ACTOR_RESTARTS, env)
        if self.roles.reference:
            self.roles.reference.start(
                ReferenceWorker, [(self.cfg, p.resolved_model)] * self.roles.reference.num_actors, ACTOR_RESTARTS, env
            )

    def _start_policy(self) -> None:
        group, world = self.roles.policy, self.roles.policy.num_actors
        args = [(self.cfg, self.prepared.resolved_model, rank, world, self.prepared.total_steps) for rank in range(world)]
        group.start(PolicyWorker, args, max_restarts=0, env=_env(self.cfg))
        # Every rank must be running before any joins the process group: its rendezvous waits only
        # scaling.collective_timeout_s, and a rank whose predecessor still holds its bundle (a killed actor
        # that was stopped, not dead) starts later. A bundle whose node is gone is not waited for forever.
        wait_s = self.cfg.scaling.placement_timeout_s + 60
        try:
            master = ray.get([a.address.remote() for a in group.actors], timeout=wait_s)[0]
        except GetTimeoutError:
            raise RlRunError(
                f"the policy group did not start within {wait_s:g} s; the cluster may "
                "have lost the node it needs (ray status shows what is left)"
            ) from None
        self._policy_get([a.setup.remote(master) for a in group.actors])

    def _policy_get(self, refs: list[Any]) -> list[Any]:
        """Results of a collective call. If one rank dies the others would wait for it forever in the
        collective, so results are taken as they come and the first failure ends the wait."""
        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                done[ready[0]] = ray.get(ready[0])
            except RayActorError as err:
                raise PolicyDied(f"a policy worker died ({why_it_died(err, 'policy')})") from None
            except RayTaskError as err:  # a collective that timed out: rebuild from the checkpoint like a death
                if _collective_failed(err.cause):
                    raise PolicyDied(f"a policy worker's collective failed ({type(err.cause).__name__})") from None
                raise
        return [done[r] for r in refs]

    def _collect(
        self, group: ActorGroup, calls: list[tuple[int, str, tuple, Any]], on_timeout: Callable[[int], Any] | None = None
    ) -> list[Any]:
        """Results of per-actor calls, in order. A call whose actor died is issued again to the same actor
        once Ray has restarted it (`_wait_alive`: calls made while it restarts fail rather than wait). A call
        that outlives the role's timeout_s is stuck: its actor is killed (Ray restarts it), and the call's
        result is `on_timeout(call number)`, or the run ends naming the actor."""
        timeout = getattr(self.cfg.rl, group.role).timeout_s
        results = []
        for number, (index, method, args, ref) in enumerate(calls):
            for attempt in range(ACTOR_RESTARTS + 1):
                try:
                    results.append(ray.get(ref, timeout=timeout))
                    break
                except GetTimeoutError:
                    ray.kill(group.actors[index], no_restart=False)
                    _wait_alive(group.actors[index], f"{group.role} actor {index}")
                    if on_timeout is None:
                        raise RlRunError(
                            f"{group.role} actor {index} did not return from {method} within {timeout:g} s "
                            f"(rl.{group.role}.timeout_s); it was restarted. Raise the timeout if the work is that slow"
                        ) from None
                    results.append(on_timeout(number))
                    break
                except RayTaskError as err:
                    if isinstance(err.cause, RewardError):
                        raise err.cause from None
                    raise
                except RayActorError as err:
                    if attempt == ACTOR_RESTARTS:
                        raise RlRunError(
                            f"{group.role} actor {index} died {attempt + 1} times ({why_it_died(err, group.role)}); giving up"
                        ) from err
                    self.restarts[group.role] += 1
                    print(
                        f"hone: {group.role} actor {index} died ({why_it_died(err, group.role)}); re-issuing its work once Ray "
                        "has restarted it",
                        flush=True,
                    )
                    _wait_alive(group.actors[index], f"{group.role} actor {index}")
                    ref = getattr(group.actors[index], method).remote(*args)
        return results

    def _sharded(self, group: ActorGroup, method: str, args_per_actor: list[tuple]) -> list[tuple[int, str, tuple, Any]]:
        return [(i, method, args, getattr(group.actors[i], method).remote(*args)) for i, args in enumerate(args_per_actor)]

    # ------------------------------------------------------------------------------------------------
    # The steps of the algorithm

    def _focus(self) -> list[int]:
        """rl.focus: every train prompt, or those the starting policy misses (see RlConfig.focus). The
        prompts are answered in a seeded order, a chunk at a time, until enough are missed for every step
        of the run (a large prompt set is not answered whole). Decided once, with the starting weights,
        and kept in focus.json so a resumed run draws from the same prompts."""
        path, n = self.run_dir / "focus.json", len(self.prepared.train_prompts)
        if self.cfg.rl.focus == "all":
            return list(range(n))
        if path.exists():
            return [int(i) for i in json.loads(path.read_text())["kept"]]
        p, per_step = self.prepared, self.cfg.rl.prompts_per_step
        need = p.total_steps * per_step
        order = list(range(n))
        random.Random(self.cfg.seed).shuffle(order)
        scores: dict[int, float] = {}
        kept: list[int] = []
        size = max(4 * per_step, 64)  # prompts answered at a time
        with tqdm(total=n, desc="rl.focus: answering the train prompts", unit="prompt") as bar:
            for start in range(0, n, size):
                chunk = order[start : start + size]
                rows = [p.train_rows[i] for i in chunk]
                greedy = self._generate([p.train_prompts[i] for i in chunk], rows, 1, greedy=True, seed=self.cfg.seed)
                batch, _, _ = self._score(concat(self._collect(self.roles.rollout, greedy)))
                assert batch.rewards is not None and batch.valid is not None
                for i, r, ok in zip(chunk, batch.rewards.tolist(), batch.valid.tolist(), strict=True):
                    scores[i] = float(r) if ok else float("nan")
                bar.update(len(chunk))
                kept = missed_prompts(scores)
                if len(kept) >= need:
                    break
        write_json(path, {"focus": "missed", "prompts": n, "scanned": len(scores), "kept": kept or order, "scores": scores})
        if not kept:
            print(f"hone: rl.focus=missed: every answer scored the same; the steps draw from all {n} train prompts", flush=True)
            return order
        print(
            f"hone: rl.focus=missed: {len(kept)} of the {len(scores)} train prompts answered scored below the best; "
            "the steps draw from them",
            flush=True,
        )
        return kept

    def _prompt_indices(self, step: int) -> list[int]:
        return step_prompts(self.pool, step, self.cfg.rl.prompts_per_step, self.cfg.seed)

    def _launch_rollout(self, step: int) -> list[tuple[int, str, tuple, Any]]:
        indices = self._prompt_indices(step)
        prompts = [self.prepared.train_prompts[i] for i in indices]
        rows = [self.prepared.train_rows[i] for i in indices]
        return self._generate(prompts, rows, self.cfg.rl.group_size, greedy=False, seed=self.cfg.seed * 1_000_003 + step * 101)

    def _generate(self, prompts: list[str], rows: list[dict], group_size: int, greedy: bool, seed: int) -> list[Any]:
        shards = np.array_split(np.arange(len(prompts)), self.roles.rollout.num_actors)
        args = [
            ([prompts[i] for i in s], [rows[i] for i in s], group_size, seed + k, greedy, self.weights, self.version)
            for k, s in enumerate(shards)
            if len(s)
        ]
        return self._sharded(self.roles.rollout, "generate", args)

    def _score(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, torch.Tensor], float]:
        """Every reward for every sample; bad values fail the run or skip the sample (rl.on_bad_reward)."""
        started = time.perf_counter()
        lengths = batch.completion_mask.sum(dim=1).tolist()
        shards = [s for s in np.array_split(np.arange(len(batch)), self.roles.reward.num_actors) if len(s)]
        args = [
            (
                [batch.prompts[i] for i in s],
                [batch.completions[i] for i in s],
                [batch.rows[i] for i in s],
                [lengths[i] for i in s],
            )
            for s in shards
        ]
        results = self._collect(
            self.roles.reward, self._sharded(self.roles.reward, "score", args), lambda n: self._reward_timed_out(args[n])
        )
        parts = {name: torch.tensor([v for r in results for v in r[0][name]]) for name in results[0][0]}
        bad = [(int(s[i]), text) for s, r in zip(shards, results, strict=True) for i, text in r[1]]
        if bad and self.cfg.rl.on_bad_reward == "fail":
            raise RewardError(f"{bad[0][1]}. Fix the reward, or set rl.on_bad_reward=skip to leave such samples out")
        valid = torch.ones(len(batch), dtype=torch.bool)
        for index, _ in bad:
            valid[index] = False
        weights = {_name: spec.weight for _name, spec in zip(parts, self.cfg.rl.rewards, strict=True)}
        total = sum(weights[k] * torch.nan_to_num(v) for k, v in parts.items())
        batch.rewards, batch.valid, batch.reward_parts = total, valid, parts  # type: ignore[assignment]
        return batch, parts, time.perf_counter() - started

    def _reward_timed_out(self, shard: tuple) -> tuple[dict[str, list[float]], list[tuple[int, str]]]:
        """A reward call that never returned: every sample of its shard is bad (failing the run, or skipped)."""
        prompts = shard[0]
        names = [reward_name(s) for s in self.cfg.rl.rewards]
        what = (
            f"the rewards ({', '.join(names)}) did not return within {self.cfg.rl.reward.timeout_s:g} s "
            f"(rl.reward.timeout_s) for {len(prompts)} samples, the first of prompt {prompts[0]!r}"
        )
        return {name: [float("nan")] * len(prompts) for name in names}, [(i, what) for i in range(len(prompts))]

    def _advantages(self, batch: RolloutBatch) -> torch.Tensor:
        assert batch.rewards is not None and batch.valid is not None
        rewards = fill_invalid(batch.rewards, batch.valid, self.cfg.rl.group_size)
        return group_advantages(rewards, self.cfg.rl.group_size, self.cfg.rl.advantage)

    def _reference(self, batch: RolloutBatch) -> float:
        """The starting model's log-probs for the KL term: from the policy group where `reference_in_policy`
        (LoRA: the policy with its adapter off, no second copy of the model anywhere, as TRL does for PEFT
        models; ZeRO-3: a frozen copy partitioned like the policy), else from the reference actors."""
        if self.cfg.rl.kl_coef <= 0:
            return 0.0
        started = time.perf_counter()
        if self.roles.reference is None:
            shards = batch.split(self.roles.policy.num_actors)  # as _update splits: same forward passes per rank
            logps = self._policy_get([a.reference_logp.remote(s) for a, s in zip(self.roles.policy.actors, shards, strict=True)])
        else:
            shards = _split_even(batch, self.roles.reference.num_actors)
            logps = self._collect(self.roles.reference, self._sharded(self.roles.reference, "logp", [(s,) for s in shards]))
        width = batch.completion_ids.size(1)
        batch.ref_logp = torch.cat([torch.nn.functional.pad(x, (0, width - x.size(1))) for x in logps])
        return time.perf_counter() - started

    def _update(self, batch: RolloutBatch, off_policy: bool) -> dict[str, float]:
        mask = batch.loss_mask()
        totals = {
            "total_tokens": float(mask.sum().clamp(min=1)),
            "total_samples": int(batch.valid.sum().clamp(min=1)) if batch.valid is not None else len(batch),
            "max_len": self.cfg.rl.generation.max_new_tokens,
        }
        shards = batch.split(self.roles.policy.num_actors)
        sums = self._policy_get(
            [a.update.remote(s, totals, off_policy) for a, s in zip(self.roles.policy.actors, shards, strict=True)]
        )
        tokens = max(sum(s["tokens"] for s in sums), 1.0)
        out = {k: sum(s[k] for s in sums) / tokens for k in (*MEAN_STATS, "entropy")}
        out["mismatch_logp_max"] = max(s["mismatch_logp_max"] for s in sums)
        out["loss"] = sum(s["loss"] for s in sums)
        out["update_seconds"] = max(s["update_seconds"] for s in sums)
        out["lr"] = sums[0]["lr"]
        return out

    def _sync(self) -> float:
        """The policy's new weights to the rollout actors: put once in the object store, fetched by each
        rollout actor on its next call (only the LoRA adapter when LoRA is on)."""
        started = time.perf_counter()
        results = self._policy_get([a.weights.remote() for a in self.roles.policy.actors])
        self.weights, self.version = results[0], self.version + 1
        return time.perf_counter() - started

    def evaluate(self) -> dict[str, float]:
        """Greedy completions for the held-out prompts, scored by the same rewards: mean reward and parts."""
        p = self.prepared
        batch = concat(
            self._collect(self.roles.rollout, self._generate(p.eval_prompts, p.eval_rows, 1, greedy=True, seed=self.cfg.seed))
        )
        batch, parts, _ = self._score(batch)
        assert batch.rewards is not None and batch.valid is not None
        valid = batch.valid
        out = {"mean_reward": float(batch.rewards[valid].mean()) if valid.any() else float("nan")}
        out |= {f"reward/{k}": float(v[valid].mean()) for k, v in parts.items()}
        out["response_length"] = float(batch.completion_mask.sum(dim=1).float().mean())
        # Held-out rows with a `group` field (e.g. seen vs unseen facts) are also scored per group.
        for group in sorted({str(r["group"]) for r in batch.rows if r.get("group") is not None}):
            members = torch.tensor([str(r.get("group")) == group for r in batch.rows]) & valid
            out[f"mean_reward/{group}"] = float(batch.rewards[members].mean()) if members.any() else float("nan")
        return out

    def _metrics(
        self, step: int, batch: RolloutBatch, parts: dict[str, torch.Tensor], stats: dict[str, float], t: dict[str, float]
    ) -> dict[str, Any]:
        assert batch.rewards is not None and batch.valid is not None
        valid = batch.valid
        rewards = batch.rewards[valid]
        return {
            "step": step,
            "reward_mean": float(rewards.mean()) if len(rewards) else float("nan"),
            "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            **{f"reward/{k}": float(v[valid].mean()) for k, v in parts.items()},
            **stats,
            "response_length": float(batch.completion_mask.sum(dim=1).float().mean()),
            "skipped_samples": int((~valid).sum()),
            "rollout_seconds": t["rollout"],
            "score_seconds": t["score"],
            "reference_seconds": t["reference"],
            "sync_seconds": t["sync"],
            "step_seconds": t["step"],
            "samples_per_s": len(batch) / t["step"],
            "restarts": sum(self.restarts.values()),
        }

    # ------------------------------------------------------------------------------------------------
    # Checkpoints: the policy's DeepSpeed state plus the step, trusted only once COMMITTED is written

    def _save(self, step: int) -> None:
        folder = checkpoint_path(self.run_dir, step)
        shutil.rmtree(folder, ignore_errors=True)
        self._policy_get([a.save.remote(str(folder)) for a in self.roles.policy.actors])
        write_json(folder / "controller.json", {"step": step})
        write_text(folder / COMMITTED, "")  # after every rank finished writing
        for old in committed_checkpoints(self.run_dir)[: -self.cfg.checkpoint.keep]:
            shutil.rmtree(old)

    def _resume(self) -> int:
        """Load the last committed checkpoint into the policy group (and drop half-written ones)."""
        folders = committed_checkpoints(self.run_dir)
        for folder in sorted((self.run_dir / "checkpoints").glob("step_*")):
            if not (folder / COMMITTED).exists():
                shutil.rmtree(folder)
        if not folders:
            if self.version:  # a rebuilt policy group starts from base weights again: so must the rollouts
                self._sync()
            return 0
        self._policy_get([a.load.remote(str(folders[-1])) for a in self.roles.policy.actors])
        self._sync()
        step = json.loads((folders[-1] / "controller.json").read_text())["step"]
        print(f"hone: resumed from step {step} ({folders[-1].name})", flush=True)
        return int(step)


def _check_total_demand(roles: Roles) -> None:
    """All roles together must fit the cluster: say so at once rather than after a placement timeout."""
    demand: dict[str, float] = {}
    for group in roles.all().values():
        for key, value in group.bundle.items():
            demand[key] = demand.get(key, 0.0) + value * group.num_actors
    total = ray.cluster_resources()
    short = {k: v for k, v in demand.items() if total.get(k, 0.0) < v - 1e-9}
    if short:
        per_role = "; ".join(f"{name}: {g.num_actors} x {g.bundle}" for name, g in roles.all().items())
        have = ", ".join(f"{k} {total.get(k, 0.0):g}" for k in short)
        raise RolePlacementError(
            f"the RL roles together need {', '.join(f'{k} {v:g}' for k, v in short.items())} but the cluster has {have} "
            f"({per_role}); {PLACEMENT_FIX}"
        )


def step_prompts(pool: list[int], step: int, per_step: int, seed: int) -> list[int]:
    """A step's prompts, drawn from `pool`: a seeded shuffle per epoch, so a resumed run sees the same order."""
    n = len(pool)
    out: list[int] = []
    position = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        take = order[offset : offset + per_step - len(out)]
        out += [pool[i] for i in take]
        position += len(take)
    return out


def missed_prompts(scores: dict[int, float]) -> list[int]:
    """The prompts (keys) whose greedy answer scored below the best score any answer got, in order;
    none when all scored the same. NaN (a reward that failed and was skipped) is never kept."""
    valid = [v for v in scores.values() if v == v]
    best = max(valid, default=float("nan"))
    return [i for i, v in scores.items() if v == v and v < best]


def committed_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(f for f in (run_dir / "checkpoints").glob("step_*") if (f / COMMITTED).exists())


def _wait_alive(actor: Any, name: str, timeout_s: float = 300.0) -> None:
    """Block until Ray has restarted `actor` (calls made while it restarts fail rather than wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.where.remote(), timeout=30)
            return
        except ActorDiedError:
            raise RlRunError(f"{name} died and Ray will not restart it again") from None
        except (RayActorError, GetTimeoutError):
            time.sleep(0.5)
    raise RlRunError(f"{name} did not come back within {timeout_s:g} s after it died")


def _split_even(batch: RolloutBatch, parts: int) -> list[RolloutBatch]:
    bounds = np.array_split(np.arange(len(batch)), parts)
    return [batch.select(slice(int(b[0]), int(b[-1]) + 1)) for b in bounds if len(b)]


def _env(cfg: HoneConfig) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if not cfg.scaling.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _collective_failed(cause: BaseException) -> bool:
    """A collective that timed out or lost its peer. NCCL raises DistError; gloo a plain RuntimeError whose
    message names its own source files (tcp/unbound_buffer.cc: "Timed out waiting ...", "Connection closed")."""
    return isinstance(cause, torch.distributed.DistError) or (isinstance(cause, RuntimeError) and "gloo" in str(cause))
