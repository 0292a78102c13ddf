"""The progress tally: :func:`summarize`, kept up to date incrementally (:class:`ProgressTally`),
and the telemetry read from it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import PREEMPTED_ATTR, PRIOR_ATTR, WORKER_ATTR
from kubetune_api.spec import best_first_key
from kubetune_study.constraints import feasible
from kubetune_study.pareto import front_trials, ordered_front
from kubetune_study.progress._state import (
    BudgetState,
    Outcome,
    StageSummary,
    StudyProgress,
    TelemetrySummary,
    stage_of,
    trial_telemetry,
)

__all__ = ["ProgressTally", "summarize", "summarize_telemetry", "trials_by_process"]


def summarize(
    trials: Sequence[FrozenTrial],
    budget: BudgetState,
    directions: str | Sequence[str],
    elapsed_seconds: float | None = None,
) -> StudyProgress:
    """Where the study stands; ``directions`` has one direction per objective (a single
    direction for a study with one objective)."""
    tally = ProgressTally(directions)
    tally.update(trials)
    return tally.progress(budget, elapsed_seconds)


@dataclass
class _Best:
    """The best complete trial of a group so far (the first of equals)."""

    key: tuple[float, ...] = ()
    trial: FrozenTrial | None = None

    def offer(self, trial: FrozenTrial, directions: Sequence[str]) -> None:
        values = trial.values
        if trial.state != TrialState.COMPLETE or values is None or len(values) != len(directions):
            return
        if any(math.isnan(v) for v in values) or not feasible(trial):
            return
        key = best_first_key(directions, values)
        if (
            self.trial is None
            or key < self.key
            or (key == self.key and trial.number < self.trial.number)
        ):
            self.key, self.trial = key, trial


@dataclass
class _Group:
    """What finished trials contribute to a stage's row, or to the whole study's."""

    complete: int = 0
    pruned: int = 0
    best: _Best = field(default_factory=_Best)
    #: Complete trials outside the study's constraints (never the best, never on the front).
    infeasible: int = 0

    def add(self, trial: FrozenTrial, directions: Sequence[str]) -> None:
        self.complete += trial.state == TrialState.COMPLETE
        self.infeasible += trial.state == TrialState.COMPLETE and not feasible(trial)
        self.pruned += trial.state == TrialState.PRUNED
        self.best.offer(trial, directions)


class ProgressTally:
    """:func:`summarize`, kept up to date incrementally.

    A finished trial never changes, so each is folded in once (counts, every stage's best,
    the Pareto front, telemetry); only the trials still running or waiting are looked at again
    on each :meth:`update`. Runners and the operator keep one per study, so reading a study's
    progress costs what changed since the last read, not the whole study. One thing about a
    finished trial can change later: a failed trial becomes *preempted* once a retry names it
    (:func:`is_preempted`); failed trials are kept as a set of numbers for that.

    The failure breaker's run (failed trials finished after the last complete or pruned one,
    by the time they finished) is kept the same way: the latest complete or pruned trial, and
    the failed trials that finished after it. A trial read late (another runner's, finished
    earlier) lands where its time puts it; a failure retried later drops out of the run when
    :meth:`progress` counts it, as :func:`summarize` would.
    """

    def __init__(self, directions: str | Sequence[str]) -> None:
        self.directions = (directions,) if isinstance(directions, str) else tuple(directions)
        self._finished: set[int] = set()
        self._unfinished: list[FrozenTrial] = []
        self._total = 0
        self._study = _Group()
        self._stages: dict[int, _Group] = {}
        self._fail_marked = 0  # failed with the preempted mark
        self._fail_unmarked: set[int] = set()  # failed without it (preempted once retried)
        self._retried: set[int] = set()  # named by a finished trial's retry_history
        self._last_success: tuple[datetime, int] | None = None  # latest complete or pruned
        self._fails_since_success: dict[int, tuple[datetime, int]] = {}  # unmarked, after it
        self._front: list[FrozenTrial] = []
        self._overhead_sum, self._overhead_count = 0.0, 0
        self._by_process: Counter[str] = Counter()
        #: Trials looked at by the last :meth:`update` (what a read costs).
        self.examined = 0

    def update(self, trials: Sequence[FrozenTrial]) -> None:
        """Fold in the study's trials as read now (all of them; finished ones already folded
        in are skipped)."""
        unfinished: list[FrozenTrial] = []
        complete: list[FrozenTrial] = []
        examined = 0
        for t in trials:
            if t.number in self._finished:
                continue
            examined += 1
            if t.state.is_finished():
                self._finished.add(t.number)
                if PRIOR_ATTR not in t.user_attrs:
                    self._add_finished(t)
                    if t.state == TrialState.COMPLETE:
                        complete.append(t)
            else:
                unfinished.append(t)
        self.examined = examined
        self._total = max(self._total, len(trials))
        self._unfinished = [t for t in unfinished if PRIOR_ATTR not in t.user_attrs]
        if complete and len(self.directions) > 1:
            self._front = front_trials([*self._front, *complete], self.directions)

    def _add_finished(self, t: FrozenTrial) -> None:
        self._retried.update(int(n) for n in t.system_attrs.get("retry_history", []))
        if t.state == TrialState.FAIL:
            if PREEMPTED_ATTR in t.user_attrs:
                self._fail_marked += 1
            else:
                self._fail_unmarked.add(t.number)
        self._place_in_run(t)
        self._study.add(t, self.directions)
        self._stages.setdefault(stage_of(t), _Group()).add(t, self.directions)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            seconds = trial_telemetry(t).get("overhead_seconds")
            if seconds is not None:
                self._overhead_sum += float(seconds)
                self._overhead_count += 1
            if WORKER_ATTR in t.user_attrs:
                self._by_process[str(t.user_attrs[WORKER_ATTR])] += 1

    def _place_in_run(self, t: FrozenTrial) -> None:
        """Keep the failure breaker's run: failures that finished after the latest complete or
        pruned trial (marked preempted ones never count)."""
        key = (t.datetime_complete or datetime.min, t.number)
        if self._last_success is not None and key < self._last_success:
            return  # finished before a success already read: never part of the run
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._last_success = key
            self._fails_since_success = {
                n: k for n, k in self._fails_since_success.items() if k > key
            }
        elif t.state == TrialState.FAIL and PREEMPTED_ATTR not in t.user_attrs:
            self._fails_since_success[t.number] = key

    def progress(self, budget: BudgetState, elapsed_seconds: float | None = None) -> StudyProgress:
        """Where the study stands, as of the last :meth:`update`."""
        directions = self.directions
        retried = set(self._retried)
        for t in self._unfinished:
            retried.update(int(n) for n in t.system_attrs.get("retry_history", []))
        failed = len(self._fail_unmarked - retried)
        preempted = self._fail_marked + len(self._fail_unmarked & retried)
        running = sum(t.state == TrialState.RUNNING for t in self._unfinished)
        waiting = sum(t.state == TrialState.WAITING for t in self._unfinished)

        quotas = budget.stage_quotas()
        stage_rows = self._stage_rows(quotas)
        current = len(quotas) - 1
        for row in stage_rows:
            if row.complete + row.pruned + row.active < row.quota:
                current = row.index
                break

        single = len(directions) == 1
        best = self._study.best.trial if single else None
        complete, pruned = self._study.complete, self._study.pruned
        claimed = complete + pruned + running + waiting
        in_a_row = sum(n not in retried for n in self._fails_since_success)
        outcome, failure = _failed(budget, failed, in_a_row)
        if outcome == "Running" and claimed >= budget.max_trials and waiting == 0:
            outcome = "BudgetSpent"
        if (
            outcome == "Running"
            and budget.timeout_seconds is not None
            and elapsed_seconds is not None
            and elapsed_seconds >= budget.timeout_seconds
        ):
            outcome = "TimedOut"
        return StudyProgress(
            complete=complete,
            pruned=pruned,
            infeasible=self._study.infeasible,
            failed=failed,
            running=running,
            waiting=waiting,
            max_trials=budget.max_trials,
            best_value=best.values[0] if best else None,
            best_params=dict(best.params) if best else None,
            best_trial=best.number if best else None,
            current_stage=current,
            stages=tuple(stage_rows),
            outcome=outcome,
            elapsed_seconds=elapsed_seconds,
            pareto_front=() if single else ordered_front(self._front, directions),
            failed_in_a_row=in_a_row,
            failure=failure,
            preempted=preempted,
            telemetry=self.telemetry(),
            trials_total=self._total,
        )

    def _stage_rows(self, quotas: Sequence[int]) -> list[StageSummary]:
        """A row per stage of the budget: its quota, counts and best trial."""
        rows: list[StageSummary] = []
        for index, quota in enumerate(quotas):
            group = self._stages.get(index, _Group())
            best = group.best.trial
            rows.append(
                StageSummary(
                    index=index,
                    quota=quota,
                    complete=group.complete,
                    pruned=group.pruned,
                    active=sum(stage_of(t) == index for t in self._unfinished),
                    best_value=best.values[0] if best else None,
                    best_params=dict(best.params) if best else None,
                    best_trial=best.number if best else None,
                    best_values=tuple(best.values) if best else None,
                )
            )
        return rows

    def telemetry(self) -> TelemetrySummary:
        """Mean overhead per finished trial and finished trials per runner process."""
        processes = len(self._by_process)
        return TelemetrySummary(
            mean_overhead_seconds=(
                self._overhead_sum / self._overhead_count if self._overhead_count else None
            ),
            processes=processes,
            trials_per_process=sum(self._by_process.values()) / processes if processes else None,
        )

    def trials_by_process(self) -> dict[str, int]:
        """Finished trials of each runner process (``host:pid``), most first."""
        return dict(self._by_process.most_common())


def trials_by_process(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Finished trials of each runner process (``host:pid``), most first."""
    return _tally(trials).trials_by_process()


def summarize_telemetry(trials: Sequence[FrozenTrial]) -> TelemetrySummary:
    """Mean overhead per finished trial and finished trials per runner process."""
    return _tally(trials).telemetry()


def _tally(trials: Sequence[FrozenTrial]) -> ProgressTally:
    tally = ProgressTally("Minimize")  # telemetry does not depend on the directions
    tally.update(trials)
    return tally


def _failed(budget: BudgetState, failed: int, in_a_row: int) -> tuple[Outcome, str | None]:
    """Whether the failures end the study, and why in a sentence."""
    # Reaching maxFailedTrials failures stops the study (0: the first failure does).
    if budget.max_failed_trials is not None and failed > 0 and failed >= budget.max_failed_trials:
        return "TooManyFailures", (
            f"{failed} trials failed, reaching budget.maxFailedTrials ({budget.max_failed_trials})"
        )
    if in_a_row >= budget.max_consecutive_failed_trials:
        return "ConsecutiveFailures", (
            f"the last {in_a_row} trials failed in a row, reaching "
            f"budget.maxConsecutiveFailedTrials ({budget.max_consecutive_failed_trials}); the "
            "runners' logs say why"
        )
    return "Running", None
