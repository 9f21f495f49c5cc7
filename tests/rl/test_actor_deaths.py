"""An RL actor's death is named with its cause: an out-of-memory kill, which a restart would only repeat,
says what to lower."""

from __future__ import annotations

from ray.exceptions import RayActorError

from hone.rl.controller import why_it_died

OOM = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: RolloutWorker\n"
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.3) was 30.1GB / 31.0GB (0.97)"
)


def test_an_out_of_memory_kill_is_named_with_what_to_lower():
    assert why_it_died(RayActorError(error_msg=OOM), "rollout") == (
        "killed for using too much memory: lower rl.generation.max_new_tokens or rl.prompts_per_step, "
        "or give rl.rollout more memory"
    )
    assert "deepspeed.zero_stage" in why_it_died(RayActorError(error_msg=OOM), "policy")


def test_a_preemption_and_other_deaths_are_named_too():
    assert why_it_died(RayActorError(error_msg="gone", preempted=True), "reward") == "its node was preempted"
    died = RayActorError(error_msg="The actor is dead.\n Worker exit type: SYSTEM_ERROR Worker exit detail: SIGSEGV received")
    assert why_it_died(died, "reward") == "Worker exit type: SYSTEM_ERROR Worker exit detail: SIGSEGV received"
    assert why_it_died(RayActorError(error_msg="no detail"), "reward") == "RayActorError"


def test_a_collective_that_timed_out_or_lost_its_peer_counts_as_a_policy_failure():
    from torch.distributed import DistBackendError

    from hone.rl.controller import _collective_failed

    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"
    assert _collective_failed(RuntimeError(gloo)) and _collective_failed(DistBackendError("NCCL watchdog timeout"))
    assert not _collective_failed(RuntimeError("CUDA out of memory")) and not _collective_failed(ValueError(gloo))


def test_deepspeeds_own_process_groups_get_the_configured_timeout():
    """DeepSpeed all-reduces on a clone of the world group made without a timeout: torch's default decides."""
    import datetime

    import torch.distributed.distributed_c10d as c10d

    from hone.training.ds_config import _new_groups_time_out_after

    saved = c10d.default_pg_timeout, c10d.default_pg_nccl_timeout
    try:
        _new_groups_time_out_after(7)
        assert c10d._get_default_timeout(c10d.Backend.GLOO) == datetime.timedelta(seconds=7)
    finally:
        c10d.default_pg_timeout, c10d.default_pg_nccl_timeout = saved
