"""What hone asks of every Ray Train worker group it starts, whichever cluster it runs on."""

from __future__ import annotations

import os

from hone.cluster.connect import HEALTH_CHECK_INTERVAL, prompt_health_checks


def test_health_checks_every_half_second_unless_the_user_exported_an_interval(monkeypatch):
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    monkeypatch.setenv(HEALTH_CHECK_INTERVAL, "placeholder")  # restored after the test, whatever it was
    monkeypatch.delenv(HEALTH_CHECK_INTERVAL)
    prompt_health_checks()
    assert os.environ[HEALTH_CHECK_INTERVAL] == "0.5"
    monkeypatch.setenv(HEALTH_CHECK_INTERVAL, "5")
    prompt_health_checks()
    assert os.environ[HEALTH_CHECK_INTERVAL] == "5"
    # Set in the process that calls fit(), it reaches the controller and workers only because Ray Train
    # passes it on: a Ray that stopped doing so would silently bring back the 2 s waits.
    assert HEALTH_CHECK_INTERVAL in ENV_VARS_TO_PROPAGATE
