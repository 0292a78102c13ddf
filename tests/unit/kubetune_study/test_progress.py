"""Budget, retries and stage transitions, decided from the trials alone."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import (
    ORIGIN_ATTR,
    PREEMPTED_ATTR,
    PRIOR_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WORKER_ATTR,
)
from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS
from kubetune_study.progress import (
    BudgetState,
    ProgressTally,
    TelemetrySummary,
    is_preempted,
    overclaimed,
    plan_claim,
    retried_numbers,
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
    assert progress.preempted == 1
    assert progress.waiting == 1
    assert plan_claim(progress).action == "Run"


def preempted(number: int, reason: str = "Terminated") -> FrozenTrial:
    t = trial(number, F)
    t.user_attrs = {**t.user_attrs, PREEMPTED_ATTR: reason}
    return t


def test_preempted_trials_are_counted_apart_from_failed_ones_and_outside_the_budget() -> None:
    budget = BudgetState(max_trials=3, max_failed_trials=1)
    trials = [
        trial(0, C, 0.5),
        preempted(1),  # marked: SIGTERM, or a stale heartbeat noticed by kubetune
        trial(2, F),  # retried by Optuna's own sweep: not marked, but named by its retry
        trial(3, W, retry_history=[2], failed_trial=2),
        preempted(4, "ClaimInterrupted"),  # given up without a retry: still not a failure
    ]
    progress = summarize(trials, budget, "Maximize")
    assert (progress.preempted, progress.failed, progress.waiting) == (3, 0, 1)
    assert progress.outcome == "Running"  # no failure reached maxFailedTrials=1
    retried = retried_numbers(trials)
    assert [t.number for t in trials if is_preempted(t, retried)] == [1, 2, 4]
    claim = plan_claim(progress)
    assert claim.action == "Run"  # 1 complete + 1 waiting of 3: preemptions took no budget
    # A trial whose task failed is a failure, and one reaches maxFailedTrials=1.
    failing = summarize([*trials, trial(5, F)], budget, "Maximize")
    assert (failing.failed, failing.preempted, failing.outcome) == (1, 3, "TooManyFailures")


def test_overclaimed_only_when_more_is_claimed_than_the_budget_or_a_stage_allows() -> None:
    budget = BudgetState(max_trials=3, stage_trials=(2, None))
    exact = summarize(
        [trial(0, C, 0.1), trial(1, C, 0.2), trial(2, R, stage=1)], budget, "Minimize"
    )
    assert not overclaimed(exact)
    twice = summarize(
        [trial(0, C, 0.1), trial(1, C, 0.2), trial(2, R, stage=1), trial(3, R, stage=1)],
        budget,
        "Minimize",
    )
    assert overclaimed(twice)
    stage = summarize([trial(0, C, 0.1), trial(1, R), trial(2, R)], budget, "Minimize")
    assert overclaimed(stage)  # 3 of stage 0's 2


def test_too_many_failures_stops() -> None:
    trials = [trial(0, F), trial(1, F)]
    progress = summarize(trials, BudgetState(max_trials=5, max_failed_trials=2), "Minimize")
    assert progress.outcome == "TooManyFailures"
    assert plan_claim(progress).action == "Stop"
    zero = summarize([], BudgetState(max_trials=5, max_failed_trials=0), "Minimize")
    assert zero.outcome == "Running"  # no failure yet


def finished_at(t: FrozenTrial, second: int) -> FrozenTrial:
    t.datetime_complete = datetime(2026, 1, 1) + timedelta(seconds=second)
    return t


def test_a_task_that_always_fails_stops_after_the_default_run_of_failures() -> None:
    # No maxFailedTrials: the breaker's default still ends the study.
    budget = BudgetState(max_trials=1000)
    nine = summarize([trial(n, F) for n in range(9)], budget, "Maximize")
    assert (nine.outcome, nine.failed_in_a_row, nine.failure) == ("Running", 9, None)
    assert plan_claim(nine).action == "Run"
    ten = summarize(
        [trial(n, F) for n in range(DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS)], budget, "Maximize"
    )
    assert ten.outcome == "ConsecutiveFailures" and ten.failed_in_a_row == 10
    assert ten.failure is not None and "maxConsecutiveFailedTrials (10)" in ten.failure
    claim = plan_claim(ten)
    assert claim.action == "Stop" and claim.reason == f"the study failed: {ten.failure}"
    assert ten.done


def test_a_finished_trial_between_failures_resets_the_run() -> None:
    budget = BudgetState(max_trials=100, max_consecutive_failed_trials=3)
    trials = [trial(0, F), trial(1, F), trial(2, P), trial(3, F), trial(4, F)]
    progress = summarize(trials, budget, "Maximize")
    assert (progress.outcome, progress.failed_in_a_row, progress.failed) == ("Running", 2, 4)
    third = summarize([*trials, trial(5, F)], budget, "Maximize")
    assert third.outcome == "ConsecutiveFailures"


def test_failures_in_a_row_go_by_when_trials_finished() -> None:
    # Trial 1 (started early) completed last, after failures of later-numbered trials.
    budget = BudgetState(max_trials=100, max_consecutive_failed_trials=2)
    trials = [
        finished_at(trial(0, F), 1),
        finished_at(trial(2, F), 2),
        finished_at(trial(3, F), 3),
        finished_at(trial(1, C, 0.5), 4),
        finished_at(trial(4, F), 5),
    ]
    progress = summarize(trials, budget, "Maximize")
    assert (progress.outcome, progress.failed_in_a_row) == ("Running", 1)


def test_retried_and_running_trials_do_not_break_or_extend_the_run() -> None:
    budget = BudgetState(max_trials=100, max_consecutive_failed_trials=2)
    trials = [
        trial(0, C, 0.5),
        trial(1, F),
        trial(2, F),  # a runner died: retried below, not a failure of the task
        trial(3, W, retry_history=[2], failed_trial=2),
        trial(4, R),
    ]
    progress = summarize(trials, budget, "Maximize")
    assert (progress.outcome, progress.failed_in_a_row) == ("Running", 1)
    assert summarize([*trials, trial(5, F)], budget, "Maximize").outcome == "ConsecutiveFailures"


def test_a_tally_keeps_the_run_of_failures_when_trials_are_read_late_or_retried() -> None:
    # Runners report at different times: a trial read later may have finished earlier.
    budget = BudgetState(max_trials=100, max_consecutive_failed_trials=3)
    trials = [
        finished_at(trial(0, F), 3),
        finished_at(trial(1, F), 4),
        finished_at(trial(2, C, 0.5), 2),
        finished_at(trial(3, F), 5),
    ]
    tally = ProgressTally("Maximize")
    tally.update([*trials[:2], trial(2, R)])
    assert tally.progress(budget).failed_in_a_row == 2
    tally.update(trials[:3])  # trial 2 completed before both failures: the run stands
    assert tally.progress(budget).failed_in_a_row == 2
    tally.update(trials)
    assert tally.progress(budget).outcome == "ConsecutiveFailures"
    # Trial 3's runner had died: the retry that names it takes it out of the run.
    retried = [*trials, trial(4, W, retry_history=[3], failed_trial=3)]
    tally.update(retried)
    assert (tally.progress(budget).outcome, tally.progress(budget).failed_in_a_row) == (
        "Running",
        2,
    )
    assert tally.progress(budget) == summarize(retried, budget, "Maximize")
    # A trial that completes after them all ends the run.
    done = [*trials, finished_at(trial(4, C, 0.7, retry_history=[3], failed_trial=3), 6)]
    tally.update(done)
    assert tally.progress(budget).failed_in_a_row == 0
    assert tally.progress(budget) == summarize(done, budget, "Maximize")


def test_max_failed_trials_says_its_own_reason_first() -> None:
    budget = BudgetState(max_trials=100, max_failed_trials=3, max_consecutive_failed_trials=3)
    progress = summarize([trial(n, F) for n in range(3)], budget, "Maximize")
    assert progress.outcome == "TooManyFailures"
    assert progress.failure == "3 trials failed, reaching budget.maxFailedTrials (3)"


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


# --------------------------------------------------------------------------- several objectives

TWO = ("Maximize", "Minimize")


def scored(
    number: int,
    state: TrialState,
    values: tuple[float, float] | None = None,
    stage: int = 0,
    **user: Any,
) -> FrozenTrial:
    t = optuna.trial.create_trial(
        state=state,
        values=list(values) if state == TrialState.COMPLETE and values else None,
        params={"x": 0.1 * number},
        distributions={"x": FloatDistribution(0, 10)},
        user_attrs={STAGE_ATTR: stage, **user},
    )
    t.number = number
    return t


def test_multi_objective_trials_count_against_the_budget_like_single_ones() -> None:
    budget = BudgetState(max_trials=3)
    trials = [scored(0, C, (0.9, 100)), scored(1, P), scored(2, R)]
    progress = summarize(trials, budget, TWO)
    assert (progress.complete, progress.pruned, progress.running) == (1, 1, 1)
    assert progress.outcome == "BudgetSpent" and plan_claim(progress).action == "Wait"
    single = summarize([trial(0, C, 0.9), trial(1, P), trial(2, R)], budget, "Maximize")
    assert (progress.finished, progress.active, progress.outcome) == (
        single.finished,
        single.active,
        single.outcome,
    )


def test_multi_objective_progress_has_a_front_not_a_best() -> None:
    trials = [
        scored(0, C, (0.90, 1000)),
        scored(1, C, (0.95, 5000)),
        scored(2, C, (0.85, 2000)),
        scored(3, C, (0.80, 100)),
    ]
    progress = summarize(trials, BudgetState(max_trials=10), TWO)
    assert progress.best_value is None and progress.best_trial is None
    assert [t.number for t in progress.pareto_front] == [1, 0, 3]
    # The stage's best (what later stages fix): best by the first objective, on the front.
    assert progress.stages[0].best_trial == 1
    assert progress.stages[0].best_values == (0.95, 5000)
    assert progress.stages[0].best_value == 0.95


def test_a_stage_tie_on_the_first_objective_goes_to_the_better_second() -> None:
    trials = [scored(0, C, (0.95, 900)), scored(1, C, (0.95, 300)), scored(2, C, (0.90, 10))]
    progress = summarize(trials, BudgetState(max_trials=10), TWO)
    assert progress.stages[0].best_trial == 1


def test_warm_start_priors_are_neither_counted_nor_best() -> None:
    prior = {PRIOR_ATTR: "old#0"}
    copied = optuna.trial.create_trial(
        state=C,
        value=0.999,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 10)},
        user_attrs=prior,
    )
    copied.number = 0
    # One objective: a prior with the best value is not the best, not counted, in no stage.
    progress = summarize([copied, trial(1, C, 0.5)], BudgetState(max_trials=2), "Maximize")
    assert (progress.complete, progress.finished) == (1, 1)
    assert progress.best_trial == 1 and progress.stages[0].complete == 1
    assert plan_claim(progress).action == "Run"
    # Several objectives: a prior is never on the front.
    several = summarize(
        [scored(0, C, (0.99, 1), **prior), scored(1, C, (0.5, 50))], BudgetState(max_trials=5), TWO
    )
    assert [t.number for t in several.pareto_front] == [1] and several.complete == 1


def test_a_queued_warm_start_point_is_run_first_and_counted() -> None:
    queued = scored(0, W, **{ORIGIN_ATTR: "point 0"})
    progress = summarize([queued], BudgetState(max_trials=1), TWO)
    assert progress.waiting == 1 and progress.outcome == "Running"
    claim = plan_claim(progress)
    assert (claim.action, claim.stage) == ("Run", 0)


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


def _study_trials(count: int) -> list[FrozenTrial]:
    """A study's trials as runners leave them: finished ones of two stages, failures (some
    preempted and retried), telemetry, and a few still running or queued at the end."""
    trials = []
    for n in range(count):
        state = [C, C, P, F, C][n % 5]
        t = trial(n % 100, state, 0.001 * ((n * 37) % 101), stage=n * 2 // count)
        _renumbered(t, n)
        t.set_user_attr(WORKER_ATTR, f"host:{n % 3}")
        t.set_user_attr(TELEMETRY_ATTR, {"overhead_seconds": 0.01 * (n % 7)})
        if state == F and n % 10 == 3:
            t.set_user_attr(PREEMPTED_ATTR, "HeartbeatLost")
        trials.append(t)
    return trials


def _renumbered(t: FrozenTrial, number: int) -> FrozenTrial:
    t.number = number
    return t


def test_an_incremental_tally_agrees_with_a_summary_of_all_trials_at_every_read() -> None:
    budget = BudgetState(max_trials=200, max_failed_trials=100, stage_trials=(60, None))
    trials = _study_trials(150)
    tally = ProgressTally("Maximize")
    for end in range(0, 151, 25):
        # The study as a reader sees it: the first `end` trials, the last two still running,
        # and a retry queued that names an earlier failure (which becomes preempted).
        seen = list(trials[:end])
        if end >= 10:
            seen[-2:] = [_renumbered(trial(0, R, stage=1), t.number) for t in seen[-2:]]
            seen.append(_renumbered(trial(0, W, retry_history=[8]), end))
        tally.update(seen)
        assert tally.progress(budget, 5.0) == summarize(seen, budget, "Maximize", 5.0)


def test_a_tally_looks_only_at_new_and_unfinished_trials_on_each_read() -> None:
    trials = _study_trials(1000)
    tally = ProgressTally("Maximize")
    tally.update(trials[:-2] + [_renumbered(trial(0, R), n) for n in (998, 999)])
    assert tally.examined == 1000  # the first read: the whole study
    tally.update(trials[:-1] + [_renumbered(trial(0, R), n) for n in (999, 1000)])
    assert tally.examined == 3  # trial 998 finished, 999 still running, 1000 is new


def test_a_tally_keeps_the_pareto_front_of_all_trials_read() -> None:
    trials = [scored(n, C, (0.5 + 0.01 * (n % 7), 100.0 * ((n * 3) % 11))) for n in range(40)]
    tally = ProgressTally(TWO)
    for end in (10, 25, 40):
        tally.update(trials[:end])
        expected = summarize(trials[:end], BudgetState(max_trials=50), TWO).pareto_front
        assert tally.progress(BudgetState(max_trials=50)).pareto_front == expected
