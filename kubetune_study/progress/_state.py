"""What a study's progress is made of: the live budget, the rows of its stages, its telemetry,
:class:`StudyProgress` itself, and what a single trial says (preempted, stage, telemetry)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import PREEMPTED_ATTR, STAGE_ATTR, TELEMETRY_ATTR, TrialTelemetry
from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS
from kubetune_study.pareto import ParetoPoint

__all__ = [
    "FAILED_OUTCOMES",
    "BudgetState",
    "Outcome",
    "StageSummary",
    "StudyProgress",
    "TelemetrySummary",
    "is_preempted",
    "retried_numbers",
    "stage_of",
    "trial_telemetry",
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
    #: Complete trials outside the study's constraints (counted in ``complete`` too).
    infeasible: int = 0

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


def stage_of(trial: FrozenTrial) -> int:
    """The stage ``trial`` belongs to (0 for a study without stages)."""
    return int(trial.user_attrs.get(STAGE_ATTR, 0))


def trial_telemetry(trial: FrozenTrial) -> TrialTelemetry:
    """The trial's telemetry (empty for a trial that recorded none)."""
    raw = trial.user_attrs.get(TELEMETRY_ATTR)
    return cast(TrialTelemetry, raw) if isinstance(raw, dict) else {}
