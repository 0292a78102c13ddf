"""A runner's settings are read from its environment when it starts, not when imported."""

from __future__ import annotations

import pytest

from kubetune_api.contract import STALL_FLOOR_ENV, TRIAL_LIMIT_GRACE_ENV, WAIT_SECONDS_ENV
from trial_runner.settings import RunnerSettings
from trial_runner.watchdog import LIMIT_GRACE, STALL_FLOOR


def test_unset_variables_give_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (WAIT_SECONDS_ENV, STALL_FLOOR_ENV, TRIAL_LIMIT_GRACE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert RunnerSettings.from_env() == RunnerSettings(2.0, STALL_FLOOR, LIMIT_GRACE)


def test_the_environment_is_read_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WAIT_SECONDS_ENV, "0.5")
    monkeypatch.setenv(STALL_FLOOR_ENV, "2")
    monkeypatch.setenv(TRIAL_LIMIT_GRACE_ENV, "1")
    assert RunnerSettings.from_env() == RunnerSettings(0.5, 2.0, 1.0)
    given = {WAIT_SECONDS_ENV: "3"}
    assert RunnerSettings.from_env(given) == RunnerSettings(3.0, STALL_FLOOR, LIMIT_GRACE)
