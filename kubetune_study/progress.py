"""Where a study stands, computed from its trials alone (pure; no storage access).

Every runner process, the local CLI and the operator read a study's state through
:func:`summarize`, so they agree on the budget, the current stage and the best trial without
talking to each other: the storage is the only shared state.

Budget rules:
    * ``maxTrials`` counts trials that finished COMPLETE or PRUNED, plus those RUNNING or
      WAITING (they will finish). A claim is refused once that sum reaches the budget.
    * A *preempted* trial (its runner was stopped or died: :func:`is_preempted`) is counted
      apart, never as a failure: it is re-queued and its retry stands in for it.
    * ``maxFailedTrials``, ``timeout``: once reached, nothing new is claimed.
    * The failure breaker: once the last ``maxConsecutiveFailedTrials`` finished trials (by the
      time they finished; default 10) all failed, with no complete or pruned trial between
      them, nothing new is claimed either. A task that fails every trial therefore stops after
      a handful of trials even without ``maxFailedTrials``. Either way the study has failed,
      and :attr:`StudyProgress.failure` says why in one sentence (the runner's log, ``kubetune
      run`` and the operator's ``Failed`` condition all show it).
    * A trial with several objectives counts exactly like one with one.
    * Trials added from another study by a warm start (``PRIOR_ATTR``) inform the sampler
      only: they are not counted, belong to no stage and are never the best.

Best: with one objective, the best complete trial (the first of equals). With several, the
Pareto front (:mod:`kubetune_study.pareto`); a stage's best, whose parameters later stages fix,
is then the trial best by the first objective, ties broken by the next ones
(:func:`kubetune_api.spec.best_first_key`), which always lies on the stage's front.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import (
    PREEMPTED_ATTR,
    PRIOR_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WORKER_ATTR,
    TrialTelemetry,
)
from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS, best_first_key
from kubetune_study.pareto import ParetoPoint, front_trials, ordered_front

__all__ = [
    "FAILED_OUTCOMES",
    "BudgetState",
    "Claim",
    "ProgressTally",
    "StageSummary",
    "StudyProgress",
    "TelemetrySummary",
    "is_preempted",
    "overclaimed",
    "plan_claim",
    "retried_numbers",
    "summarize",
    "summarize_telemetry",
    "trial_telemetry",
    "trials_by_process",
]

Outcome = Literal["Running", "BudgetSpent", "TooManyFailures", "ConsecutiveFailures", "TimedOut"]
#: Outcomes of a study that failed.
FAILED_OUTCOMES = ("TooManyFailures", "ConsecutiveFailures")


@dataclass(frozen=True)
class BudgetState:
    """The live budget, as stored in the study (edits to the HPOStudy update it)."""

    max_trials: int
    max_failed_trials: int | None = None
    timeout_seconds: float | None = None
    max_consecutive_failed_trials: int = DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS
    stage_trials: tuple[int | None, ...] = ()  # per stage; None = the rest of the budget

    def stage_quotas(self) -> list[int]:
        if not self.stage_trials:
            return [self.max_trials]
        fixed = sum(t for t in self.stage_trials if t is not None)
        quotas = [
            t if t is not None else max(self.max_trials - fixed, 0) for t in self.stage_trials
        ]
        return quotas


@dataclass(frozen=True)
class StageSummary:
    index: int
    quota: int
    complete: int
    pruned: int
    active: int  # running + waiting
    best_value: float | None  # the first objective's value of the stage's best trial
    best_params: dict[str, Any] | None
    best_trial: int | None
    best_values: tuple[float, ...] | None = None  # every objective's value of that trial

    def __post_init__(self) -> None:
        if self.best_values is None and self.best_value is not None:
            object.__setattr__(self, "best_values", (self.best_value,))


@dataclass(frozen=True)
class TelemetrySummary:
    """What the warm runners saved, over the finished (complete or pruned) trials."""

    mean_overhead_seconds: float | None  # wall time that is not training or validation
    processes: int  # runner processes that finished trials
    trials_per_process: float | None  # finished trials per process: how warm runners stay


@dataclass(frozen=True)
class StudyProgress:
    complete: int
    pruned: int
    failed: int  # the task failed (preempted trials are not counted here)
    running: int
    waiting: int
    max_trials: int
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None
    current_stage: int
    stages: tuple[StageSummary, ...]
    outcome: Outcome
    elapsed_seconds: float | None
    stage_best_params: tuple[dict[str, Any], ...] = field(default=())
    #: Several objectives: the Pareto front (``best_*`` are then ``None``).
    pareto_front: tuple[ParetoPoint, ...] = ()
    #: Failed trials since the last complete or pruned one (by the time they finished).
    failed_in_a_row: int = 0
    #: Why the study failed, in one sentence; ``None`` unless it did.
    failure: str | None = None
    #: Trials whose runner was stopped or died (re-queued; neither failed nor in the budget).
    preempted: int = 0
    telemetry: TelemetrySummary = field(default=TelemetrySummary(None, 0, None))
    #: Every trial of the study, warm-start and preempted ones included (the next number).
    trials_total: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def active(self) -> int:
        return self.running + self.waiting

    @property
    def done(self) -> bool:
        """Nothing more will run: the outcome is final and no trial is still in flight."""
        return self.outcome != "Running" and self.active == 0


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials some retry names in its ``retry_history`` (Optuna's record)."""
    retried: set[int] = set()
    for t in trials:
        retried.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return retried


def is_preempted(trial: FrozenTrial, retried: set[int]) -> bool:
    """Whether ``trial`` failed because its runner was stopped or died, not because of its task.

    kubetune marks such a trial (:data:`~kubetune_api.contract.PREEMPTED_ATTR`) before failing
    it. Optuna's own stale-trial sweep, which ``study.optimize`` runs too, fails a trial without
    the mark but queues a retry naming it, so a retried trial counts as preempted as well
    (``retried`` is :func:`retried_numbers` of the study's trials).
    """
    if trial.state != TrialState.FAIL:
        return False
    return PREEMPTED_ATTR in trial.user_attrs or trial.number in retried


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
        if any(math.isnan(v) for v in values):
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

    def add(self, trial: FrozenTrial, directions: Sequence[str]) -> None:
        self.complete += trial.state == TrialState.COMPLETE
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
        self._stages.setdefault(_stage_of(t), _Group()).add(t, self.directions)
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
        stage_rows: list[StageSummary] = []
        for index, quota in enumerate(quotas):
            group = self._stages.get(index, _Group())
            best = group.best.trial
            stage_rows.append(
                StageSummary(
                    index=index,
                    quota=quota,
                    complete=group.complete,
                    pruned=group.pruned,
                    active=sum(_stage_of(t) == index for t in self._unfinished),
                    best_value=best.values[0] if best else None,
                    best_params=dict(best.params) if best else None,
                    best_trial=best.number if best else None,
                    best_values=tuple(best.values) if best else None,
                )
            )
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


def _stage_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(STAGE_ATTR, 0))


def trial_telemetry(trial: FrozenTrial) -> TrialTelemetry:
    """The trial's telemetry (empty for a trial that recorded none)."""
    raw = trial.user_attrs.get(TELEMETRY_ATTR)
    return cast(TrialTelemetry, raw) if isinstance(raw, dict) else {}


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


@dataclass(frozen=True)
class Claim:
    """What a runner should do next: run a trial of ``stage``, wait, or stop."""

    action: Literal["Run", "Wait", "Stop"]
    stage: int = 0
    reason: str = ""


def plan_claim(progress: StudyProgress) -> Claim:
    """Decide, under the study's claim lock, whether this runner may start another trial."""
    if progress.failure is not None:
        return Claim("Stop", reason=f"the study failed: {progress.failure}")
    if progress.outcome == "TimedOut":
        return Claim("Stop", reason="timeout reached")
    if progress.waiting > 0:
        # A queued trial (a retry, or a warm start's point) is waiting: run it (it keeps its
        # own stage).
        return Claim("Run", stage=progress.current_stage, reason="queued trial")
    if progress.outcome == "BudgetSpent":
        if progress.running > 0:
            # Another runner may still die mid-trial; stay to pick up its retry.
            return Claim("Wait", reason="budget claimed; trials still running elsewhere")
        return Claim("Stop", reason="budget spent")
    stage = progress.stages[progress.current_stage]
    if stage.complete + stage.pruned + stage.active >= stage.quota:
        # The current stage is fully claimed but not finished: the next stage needs its
        # best parameters, so wait for the running trials.
        return Claim("Wait", reason="waiting for the stage's running trials")
    earlier = progress.stages[: progress.current_stage]
    if any(s.active > 0 for s in earlier):
        return Claim("Wait", reason="waiting for the previous stage to finish")
    return Claim("Run", stage=progress.current_stage)


def overclaimed(progress: StudyProgress) -> bool:
    """Whether more trials are claimed than the budget or a stage's quota allows, which only
    happens when two runners claimed at once (a claim lock lost with its connection)."""
    if progress.finished + progress.active > progress.max_trials:
        return True
    return any(s.complete + s.pruned + s.active > s.quota for s in progress.stages)
