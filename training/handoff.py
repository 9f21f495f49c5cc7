"""What a Ray Train worker group is given, passed by reference so that only the workers unpickle it.

Ray Train hands `train_loop_config` to its controller as well as to the workers, and the controller
unpickles it: a TrainPlan or a sharded job names classes and functions of hone.training, whose import pulls
in torch, transformers and datasets (~5 s of CPU in a process that never trains). Wrapped in an ObjectRef,
which Ray leaves as it is inside a dict, the controller holds a pointer; each worker fetches the value. The
driver keeps the reference, and with it the value, alive until fit() returns.
"""

from __future__ import annotations

from typing import Any

HANDOFF = "hone_handoff"


def by_reference(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The driver's side: `loop_config` put in the object store once."""
    import ray

    return {HANDOFF: ray.put(loop_config)}


def dereference(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The worker's side: the dict `by_reference` was given."""
    import ray

    return ray.get(loop_config[HANDOFF])
