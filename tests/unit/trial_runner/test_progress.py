"""Budget, retries and stage transitions, decided from the trials alone."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from trial_runner.contract import STAGE_ATTR, TELEMETRY_ATTR, WORKER_ATTR
from trial_runner.progress import (
    BudgetState,
    TelemetrySummary,
    plan_claim,
    summarize,
    summarize_telemetry,
    trial_telemetry,
)


def trial(
    number: int, state: TrialState, value: float | None = None, stage: int = 0, **system: Any
) -> FrozenTrial:
    return _numbered(number, state, value, stage, system)


def _numbered(
    number: int, state: TrialState, value: float | None, stage: int, system: dict[str, Any]
) -> FrozenTrial:
    t = optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"x": 0.1 * number},
        distributions={"x": FloatDistribution(0, 10)},
        user_attrs={STAGE_ATTR: stage},
        system_attrs=system,
    )
    t.number = number
    return t


C, P, R, W, F = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.RUNNING,
    TrialState.WAITING,
    TrialState.FAIL,
)


def test_budget_counts_finished_and_in_flight_trials() -> None:
    budget = BudgetState(max_trials=3)
    trials = [trial(0, C, 0.5), trial(1, P), trial(2, R)]
    progress = summarize(trials, budget, "Maximize")
    assert (progress.complete, progress.pruned, progress.running) == (1, 1, 1)
    assert progress.outcome == "BudgetSpent"
    assert not progress.done  # one still running
    assert plan_claim(progress).action == "Wait"
    finished = summarize([*trials[:2], trial(2, C, 0.9)], budget, "Maximize")
    assert finished.done and plan_claim(finished).action == "Stop"
    assert finished.best_value == 0.9 and finished.best_trial == 2


def test_runs_until_budget_claimed() -> None:
    progress = summarize([trial(0, C, 0.1)], BudgetState(max_trials=2), "Minimize")
    claim = plan_claim(progress)
    assert claim.action == "Run" and claim.stage == 0


def test_retried_failure_is_not_a_failure_and_waiting_retry_runs() -> None:
    trials = [trial(0, C, 0.1), trial(1, F), trial(2, W, retry_history=[1], failed_trial=1)]
    progress = summarize(trials, BudgetState(max_trials=2, max_failed_trials=1), "Minimize")
    assert progress.failed == 0
    assert progress.waiting == 1
    assert plan_claim(progress).action == "Run"


def test_too_many_failures_stops() -> None:
    trials = [trial(0, F), trial(1, F)]
    progress = summarize(trials, BudgetState(max_trials=5, max_failed_trials=2), "Minimize")
    assert progress.outcome == "TooManyFailures"
    assert plan_claim(progress).action == "Stop"
    zero = summarize([], BudgetState(max_trials=5, max_failed_trials=0), "Minimize")
    assert zero.outcome == "Running"  # no failure yet


def test_timeout_stops_claims() -> None:
    progress = summarize([], BudgetState(max_trials=5, timeout_seconds=60), "Minimize", 61.0)
    assert progress.outcome == "TimedOut"
    assert plan_claim(progress).action == "Stop"


def test_stage_transition_waits_for_the_previous_stage() -> None:
    budget = BudgetState(max_trials=4, stage_trials=(2, None))
    assert budget.stage_quotas() == [2, 2]
    first = summarize([trial(0, C, 0.3)], budget, "Maximize")
    assert plan_claim(first).stage == 0
    # Stage 0 fully claimed but one trial still running: stage 1 needs its best params.
    running = summarize([trial(0, C, 0.3), trial(1, R)], budget, "Maximize")
    assert running.current_stage == 1
    assert plan_claim(running).action == "Wait"
    done0 = summarize([trial(0, C, 0.3), trial(1, C, 0.7)], budget, "Maximize")
    claim = plan_claim(done0)
    assert (claim.action, claim.stage) == ("Run", 1)
    assert done0.stages[0].best_params == {"x": 0.1}
    assert done0.stages[0].best_value == 0.7


def _run_by(number: int, state: TrialState, worker: str, overhead: float | None) -> FrozenTrial:
    t = trial(number, state, 0.5)
    t.set_user_attr(WORKER_ATTR, worker)
    if overhead is not None:
        t.set_user_attr(TELEMETRY_ATTR, {"overhead_seconds": overhead, "wall_seconds": 2.0})
    return t


def test_telemetry_summary_counts_finished_trials_per_warm_process() -> None:
    trials = [
        _run_by(0, C, "runner-0:7", 0.5),
        _run_by(1, P, "runner-0:7", 0.1),
        _run_by(2, C, "runner-1:7", 0.3),
        _run_by(3, R, "runner-1:7", None),  # not finished: counted nowhere
        _run_by(4, C, "runner-1:7", None),  # finished by an older runner without telemetry
    ]
    summary = summarize(trials, BudgetState(max_trials=10), "Maximize").telemetry
    assert summary.processes == 2
    assert summary.trials_per_process == 2.0  # 4 finished trials, 2 processes
    assert summary.mean_overhead_seconds == pytest.approx(0.3)


def test_telemetry_summary_of_a_study_without_finished_trials_is_empty() -> None:
    summary = summarize_telemetry([trial(0, R), trial(1, F)])
    assert summary == TelemetrySummary(None, 0, None)
    assert trial_telemetry(trial(2, C, 0.1)) == {}
