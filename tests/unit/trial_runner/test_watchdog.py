"""Trial time and stall limits: the Auto rule, which limit a trial is past, and the watchdog
that ends a trial at its next step or, when its thread is stuck, from outside."""

from __future__ import annotations

import threading
import time
from typing import NoReturn

import pytest

from kubetune_api.spec import study_from_mapping
from tests.harness.studies import study_document
from trial_runner.watchdog import (
    Exceeded,
    StepTimes,
    TrialClock,
    TrialLimitExceeded,
    TrialLimits,
    Watchdog,
    auto_stall_limit,
)

AUTO = TrialLimits(trial_timeout=None, stall_timeout=None, stall_floor=300)


def test_auto_is_the_floor_until_steps_are_seen() -> None:
    assert auto_stall_limit(None, first_step=False, floor=300) == 300
    # Before a trial's first step: six floors (model build, compilation, warm-up).
    assert auto_stall_limit(None, first_step=True, floor=300) == 1800


def test_auto_is_ten_of_the_slowest_step_above_the_floor() -> None:
    assert auto_stall_limit(12.0, first_step=False, floor=300) == 300
    assert auto_stall_limit(45.0, first_step=False, floor=300) == 450
    assert auto_stall_limit(100.0, first_step=True, floor=300) == 1800
    assert auto_stall_limit(400.0, first_step=True, floor=300) == 4000


def test_a_trial_within_its_limits_is_past_none() -> None:
    clock = TrialClock(started=0.0, last_step=1000.0)
    assert AUTO.exceeded(clock, StepTimes(slowest=1.0), now=1299.0) is None


def test_a_trial_with_no_step_for_longer_than_auto_allows_is_stalled() -> None:
    clock = TrialClock(started=0.0, last_step=1000.0)
    exceeded = AUTO.exceeded(clock, StepTimes(slowest=1.0), now=1301.0)
    assert exceeded is not None and exceeded.reason == "Stalled"
    assert "301.0s" in exceeded.message and "300s, Auto" in exceeded.message
    # Its steps took a minute each: ten of them is the limit.
    assert AUTO.exceeded(clock, StepTimes(slowest=60.0), now=1599.0) is None


def test_the_first_step_has_the_first_step_allowance() -> None:
    clock = TrialClock(started=0.0)
    assert AUTO.exceeded(clock, StepTimes(slowest=1.0), now=1799.0) is None
    exceeded = AUTO.exceeded(clock, StepTimes(slowest=1.0), now=1801.0)
    assert exceeded is not None and exceeded.reason == "Stalled"
    assert "first step" in exceeded.message


def test_a_stated_stall_limit_replaces_auto() -> None:
    limits = TrialLimits(trial_timeout=None, stall_timeout=20.0, stall_floor=300)
    clock = TrialClock(started=0.0)
    exceeded = limits.exceeded(clock, StepTimes(), now=21.0)
    assert exceeded is not None and "budget.stallTimeout" in exceeded.message


def test_the_time_limit_comes_first() -> None:
    limits = TrialLimits(trial_timeout=60.0, stall_timeout=20.0, stall_floor=300)
    exceeded = limits.exceeded(TrialClock(started=0.0), StepTimes(), now=61.0)
    assert exceeded == Exceeded("TrialTimeout", "ran 61.0s, longer than budget.trialTimeout (60s)")


def test_the_budget_gives_the_limits() -> None:
    budget = {"maxTrials": 5, "trialTimeout": "30m", "stallTimeout": "1m30s"}
    spec = study_from_mapping(study_document(budget=budget)).spec
    limits = TrialLimits.from_budget(spec.budget)
    assert (limits.trial_timeout, limits.stall_timeout) == (1800.0, 90.0)
    default = study_from_mapping(study_document()).spec.budget
    assert default.stall_timeout == "Auto" and default.stall_timeout_seconds is None
    assert default.trial_timeout_seconds is None


def test_a_trial_past_its_limit_ends_at_its_next_step() -> None:
    watchdog = Watchdog(TrialLimits(trial_timeout=0.3, stall_timeout=None, stall_floor=100))

    def never(exceeded: Exceeded) -> NoReturn:
        raise AssertionError(f"ended from outside: {exceeded}")

    started = time.perf_counter()
    with pytest.raises(TrialLimitExceeded) as info, watchdog.watch(0, never) as on_step:
        while time.perf_counter() - started < 10:
            step = time.perf_counter()
            time.sleep(0.02)
            on_step(step)
    assert info.value.exceeded.reason == "TrialTimeout"
    assert time.perf_counter() - started < 5
    # The steps it made are what Auto follows for the process's next trials.
    assert watchdog.steps.slowest is not None and 0.02 <= watchdog.steps.slowest < 1


def test_a_trial_stuck_in_a_call_that_never_returns_is_ended_from_outside() -> None:
    watchdog = Watchdog(TrialLimits(None, 0.5, stall_floor=100), grace=0.5)
    ended: list[Exceeded] = []
    done = threading.Event()

    def hung(exceeded: Exceeded) -> NoReturn:
        ended.append(exceeded)
        done.set()
        threading.Event().wait()  # a runner's process is replaced here: it never returns
        raise AssertionError("unreachable")

    release = threading.Event()
    step_raised: list[BaseException] = []

    def trial() -> None:
        try:
            with watchdog.watch(7, hung) as on_step:
                release.wait()  # the step that does not return (until the test lets it)
                on_step(time.perf_counter())
        except TrialLimitExceeded as error:
            step_raised.append(error)

    stuck = threading.Thread(target=trial, daemon=True)
    started = time.perf_counter()
    stuck.start()
    assert done.wait(10), "the watchdog did not end the stuck trial"
    assert 1.0 <= time.perf_counter() - started < 5  # the stall limit, then the grace
    assert [e.reason for e in ended] == ["Stalled"]
    # Ended from outside, the trial cannot be ended again by its own thread: should its step
    # come back, the thread waits for the process to go.
    release.set()
    stuck.join(1)
    assert stuck.is_alive() and step_raised == []
