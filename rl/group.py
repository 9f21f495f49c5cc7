"""ActorGroup: N actors of one role in their own placement group, with a bounded wait for placement.

The placement group is reserved first (`reserve`), so an impossible request fails with a clear message
before anything is written, and then the actors start inside it (`start`). Rollout and reward actors may
be restarted by Ray after a crash (`max_restarts`); the controller re-issues their work.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from hone.training.errors import HoneError


class RolePlacementError(HoneError, RuntimeError):
    """A role's actors cannot be placed on this cluster; nothing was started or written."""


def role_bundle(cpus: float, gpus: float, resources: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": cpus, **resources}
    if gpus:
        bundle["GPU"] = gpus
    return {k: v for k, v in bundle.items() if v}


class ActorGroup:
    def __init__(self, role: str, num_actors: int, bundle: dict[str, float], strategy: str = "PACK") -> None:
        self.role, self.num_actors, self.bundle, self.strategy = role, num_actors, bundle, strategy
        self.group: PlacementGroup | None = None
        self.actors: list[Any] = []

    def reserve(self, timeout_s: float, fix: str) -> None:
        total = ray.cluster_resources()
        short = {
            k: (v * self.num_actors, total.get(k, 0.0)) for k, v in self.bundle.items() if total.get(k, 0.0) < v * self.num_actors
        }
        if short:
            parts = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
            raise RolePlacementError(f"the {self.role} role needs {self.num_actors} x {self.bundle} ({parts}); {fix}")
        if not self.bundle:
            return  # a role asking for nothing (cpus: 0) needs no reservation; its actors go anywhere
        self.group = placement_group([self.bundle] * self.num_actors, strategy=self.strategy)
        if not self.group.wait(timeout_seconds=timeout_s):
            remove_placement_group(self.group)
            self.group = None
            nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
            raise RolePlacementError(
                f"could not place the {self.role} role ({self.num_actors} x {self.bundle}, {self.strategy}) within "
                f"{timeout_s:g} s, with the other roles already placed; alive nodes offer {nodes}. {fix}"
            )

    def start(self, cls: type, args_per_actor: list[tuple], max_restarts: int = 0, env: dict[str, str] | None = None) -> None:
        remote: Any = ray.remote(cls)
        cpus, gpus = self.bundle.get("CPU", 0), self.bundle.get("GPU", 0)
        custom = {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU")}
        self.actors = []
        for i, args in enumerate(args_per_actor):
            where = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i) if self.group else "DEFAULT"
            options = {
                "num_cpus": cpus,
                "num_gpus": gpus,
                "resources": custom,
                "max_restarts": max_restarts,
                "max_task_retries": 0,  # the controller re-issues work itself, after re-syncing weights
                "runtime_env": {"env_vars": env or {}},
                "scheduling_strategy": where,
            }
            self.actors.append(remote.options(**options).remote(*args))

    def call_all(self, method: str, *args: Any) -> list[Any]:
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def stop_actors(self) -> None:
        """Kill the actors but keep the reservation, so a rebuilt group lands in the same places."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def stop(self) -> None:
        self.stop_actors()
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
