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
