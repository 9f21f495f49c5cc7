"""The Ray connection: an embedded local cluster by default, or an existing cluster's address."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hone.cluster.stop import reinstall
from hone.training.config import ScalingConfig
from hone.training.errors import HoneError


class PlacementError(HoneError, RuntimeError):
    """The cluster cannot place the requested workers."""


class RayStartError(HoneError, RuntimeError):
    """The embedded Ray cluster cannot start here."""


# Ray puts Unix sockets under <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/, and a socket path may
# not exceed 107 bytes. The longest name there is dash_MetricsHead; with hone's `hone-XXXXXXXX/ray` folder
# and a 7-digit pid that leaves 21 characters for HONE_RAY_TMP. Past it, Ray fails after a minute with a
# traceback that names neither the variable nor the limit.
MAX_RAY_TMP_CHARS = (
    107 - len("/hone-XXXXXXXX/ray") - len("/session_2026-12-01_20-42-58_702298_1234567") - len("/sockets/dash_MetricsHead")
)


def _ray_tmp() -> str:
    base = os.environ.get("HONE_RAY_TMP", "/tmp")
    if len(base) > MAX_RAY_TMP_CHARS:
        raise RayStartError(
            f"HONE_RAY_TMP={base} is {len(base)} characters; Ray's socket paths under it would pass the 107-byte limit "
            f"of Unix sockets: use a folder of at most {MAX_RAY_TMP_CHARS} characters, such as /tmp"
        )
    return base


HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def prompt_health_checks() -> None:
    """Ray Train's controller notices that its worker group started, finished or failed at its next health
    check, every 2 s by default: every run, pipeline stage and sharded evaluation waited for it at its start
    and end (a profile, not a bench: three 3-step runs on one connected 2-core cluster took 16.5-17.1 s each
    at 2 s, 13.5-15.8 s at 0.5 s). Ray passes the setting from the
    process that calls fit() to the controller and its workers; 0.5 s keeps the polling light on large
    groups, and a value the user exported is kept (docs/cluster.md)."""
    os.environ.setdefault(HEALTH_CHECK_INTERVAL, "0.5")


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join `address`, or start a fresh local cluster that ends with the run.

    An already-connected Ray (a test's cluster, a notebook) is reused and left running. The local
    cluster gets its own temp dir, so a stale session on a shared machine cannot hijack it.
    """
    import ray

    prompt_health_checks()
    if ray.is_initialized():
        yield
        return
    temp_dir = ""
    with contextlib.ExitStack() as stack:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # Ray makes the session dir it is given world-writable, again whenever a process of it starts, so
            # a chmod after start does not hold. It gets a folder inside one of hone's own (mkdtemp: 0700),
            # which no other user can enter.
            temp_dir = tempfile.mkdtemp(prefix="hone-", dir=_ray_tmp())
            # Ray starts workers at niceness 15, so on a small machine its own background processes take CPU
            # from training; in a cluster that exists only for this run, training comes first (~13% faster
            # steps measured on 2 cores). Ray Train's print patch would also echo every worker line twice.
            os.environ.setdefault("RAY_worker_niceness", "0")
            os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
            # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls.
            port = stack.enter_context(own_state_api())
            ray.init(
                address="local",
                _temp_dir=os.path.join(temp_dir, "ray"),
                include_dashboard=True,
                dashboard_port=port,
                logging_level=logging.WARNING,
            )
            _private_token()
        reinstall()
        try:
            yield
        except BaseException:
            ray.shutdown()
            if temp_dir:
                print(f"hone: Ray's logs of this run are kept in {temp_dir}", file=sys.stderr, flush=True)
            raise
        ray.shutdown()
        # The session (logs, spilled objects, runtime_env packages) is this run's alone: a finished run
        # leaves none in /tmp. HONE_KEEP_RAY_TMP=1 keeps it.
        if temp_dir and os.environ.get("HONE_KEEP_RAY_TMP") != "1":
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def own_state_api() -> Iterator[int]:
    """A free dashboard port, and Ray's state API pinned to it for every process started meanwhile.

    Ray Train's placement-group cleaner asks the state API whether its controller lives. Left to find
    "the" cluster itself (RAY_ADDRESS, the newest session under /tmp/ray), it asks another run's cluster
    on the same machine, is told the controller is gone, and removes its own run's placement group.
    Every process of a local cluster inherits the driver's environment, so pinning it here pins it there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        yield port
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _private_token() -> None:
    """Ray writes the token it generates for a new local cluster (~/.ray/auth_token) world-readable; with it
    any user of the machine could run code as this one. Ray's own processes run as this user, so an
    owner-only mode takes nothing from them."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if token.is_file() and token.stat().st_mode & 0o077:
        token.chmod(0o600)


def worker_bundle(scaling: ScalingConfig) -> dict[str, float]:
    bundle = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        bundle["GPU"] = scaling.gpus_per_worker
    return bundle


def worker_task(fn: Callable[..., Any], scaling: ScalingConfig) -> Any:
    """`fn` as a Ray task sized like one training worker (evaluation, DPO's reference, a pipeline's answers).
    DEFAULT scheduling: inside a `hone tune` trial a task would otherwise land in the trial's own (tiny)
    placement group and never fit."""
    import ray

    bundle = worker_bundle(scaling)
    return ray.remote(fn).options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), scheduling_strategy="DEFAULT")


def check_placement(scaling: ScalingConfig) -> None:
    """Reserve the workers' bundles once, with a bounded wait, so an impossible request fails with a clear
    message instead of Ray Train waiting forever. The reservation is released before training."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = worker_bundle(scaling)
    total = ray.cluster_resources()
    need = {k: v * scaling.num_workers for k, v in bundle.items()}
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if total.get(k, 0.0) < v}
    if short:
        parts = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
        raise PlacementError(f"scaling.num_workers={scaling.num_workers} needs more than the cluster has ({parts}); {_fix()}")
    group = placement_group([bundle] * scaling.num_workers, strategy=scaling.placement_strategy)
    try:
        ready = group.wait(timeout_seconds=scaling.placement_timeout_s)
    finally:
        remove_placement_group(group)
    if not ready:
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        raise PlacementError(
            f"could not place {scaling.num_workers} workers of {bundle} with strategy {scaling.placement_strategy} "
            f"within {scaling.placement_timeout_s:g} s; alive nodes offer {nodes}. {_fix()}"
        )


def _fix() -> str:
    return "lower scaling.num_workers or scaling.cpus_per_worker/gpus_per_worker, relax scaling.placement_strategy, or add nodes"
