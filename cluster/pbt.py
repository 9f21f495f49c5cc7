"""hone's population based training: Ray's scheduler, without pauses that only cost restarts."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class OwnSlotsPBT(PopulationBasedTraining):
    """Ray's asynchronous PBT pauses a trial that reports while another waits (pending or paused), so that
    a population bigger than its concurrent slots takes turns. Pausing a hone trial stops its run, and
    resuming it is a run's whole start-up again (worker group, model and checkpoint load). When every trial
    has a slot of its own, the one waiting is only the trial PBT just exploited, restarting from its copy:
    pausing the others then costs each of them a restart and gains nothing, so they continue."""

    def __init__(self, *, all_have_slots: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._all_have_slots = all_have_slots

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        # In asynchronous PBT, PAUSE comes only from "another trial waits"; an exploited trial gets NOOP.
        if decision == TrialScheduler.PAUSE and self._all_have_slots:
            return TrialScheduler.CONTINUE
        return decision
