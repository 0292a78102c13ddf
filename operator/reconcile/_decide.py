"""The decision as a short sequence of named steps over a :class:`PlanBuilder`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from hpo_operator.config import RunnerStartPolicy
from hpo_operator.reconcile._observe import ObservedPod
from hpo_operator.reconcile._plan import (
    Event,
    Plan,
    PlanBuilder,
    SizingInput,
)
from hpo_operator.reconcile._ready import ready
from hpo_operator.reconcile._record import number, record_progress, record_warm_start
from hpo_operator.reconcile._runners import create_runners, record_sizing, remove_ended_runners
from hpo_operator.reconcile._start import (
    count_failed_starts,
    gave_up_starting,
    note_runners_going,
)

from kubetune_api.spec import SpecError, StudySpec
from kubetune_api.status import (
    ConditionReason,
    ConditionType,
    StudyStatus,
    set_condition,
    timestamp,
)
from kubetune_study.progress import FAILED_OUTCOMES, StudyProgress
from kubetune_study.warmstart import WarmStartReport

__all__ = ["decide", "invalid_spec"]


def decide(
    spec: StudySpec,
    status: StudyStatus,
    generation: int,
    children: Sequence[ObservedPod],
    progress: StudyProgress | None,
    sizing: SizingInput,
    now: dt.datetime,
    *,
    storage_error: str | None = None,
    max_runner_failures: int = 5,
    start_policy: RunnerStartPolicy | None = None,
    warm_start: WarmStartReport | None = None,
) -> Plan:
    """The plan for one study at one moment (see :mod:`hpo_operator.reconcile` for the rules).

    Args:
        spec: The validated spec.
        status: The study's current status (empty for a new study).
        generation: ``metadata.generation``; written as ``observedGeneration``.
        children: The study's pods.
        progress: The study's progress from the storage; ``None`` when it cannot be read.
        sizing: The sizing decision, or why there is none yet (estimate pending or failed).
        now: The current time (for condition transition times and start/completion times).
        storage_error: Why the storage cannot be read, when ``progress`` is ``None``.
        max_runner_failures: Failed runner pods (on top of the parallelism) after which the
            study is Failed; counted since the spec last changed.
        start_policy: How often runners that cannot start are tried again, and how long
            apart, before the study is Failed with their reason (default: the defaults of
            :class:`~hpo_operator.config.RunnerStartPolicy`).
        warm_start: What the study's warm start did (``None``: it has none, or it is not
            known in this pass).
    """
    b = PlanBuilder(spec, status, generation, now, children)
    start_policy = start_policy or RunnerStartPolicy()
    if progress is None:
        return _storage_unavailable(b, storage_error)
    record_progress(b, progress)
    record_warm_start(b, warm_start)
    note_runners_going(b, progress)
    if progress.done:
        return _finished(b, progress)
    b.status.completion_time = None
    b.condition(
        ConditionType.SUCCEEDED,
        False,
        ConditionReason.RUNNING,
        f"{progress.finished}/{progress.max_trials} trials finished",
    )
    alive = count_failed_starts(b, progress, remove_ended_runners(b), start_policy)
    gave_up = gave_up_starting(b, start_policy)
    crashed = not gave_up and _runner_failures(b, max_runner_failures)
    _suspension(b)
    if spec.suspend or crashed or gave_up:
        return _drained(b, alive, crashed)
    record_sizing(b, sizing)
    created = create_runners(b, progress, sizing, alive)
    ready(b, progress, sizing, alive, created)
    return b.plan()


def _storage_unavailable(b: PlanBuilder, error: str | None) -> Plan:
    """Keep what runs and what is known; create nothing; say why."""
    for name in ("trials", "best", "pareto_front", "stage", "trials_summary", "telemetry"):
        value = getattr(b.old, name)
        if value is not None:
            setattr(b.status, name, value)
    b.count_runners(b.runner_pods)
    message = f"cannot read the study's storage: {error or 'unknown error'}"
    b.condition(ConditionType.READY, False, ConditionReason.STORAGE_UNAVAILABLE, message)
    if b.entered(ConditionType.READY, ConditionReason.STORAGE_UNAVAILABLE):
        b.event("Warning", ConditionReason.STORAGE_UNAVAILABLE, error or "cannot read the storage")
    return b.plan()


def _finished(b: PlanBuilder, progress: StudyProgress) -> Plan:
    """Succeeded or Failed for good: every pod deleted, ``completionTime`` set."""
    metric = b.spec.primary_objective.metric
    preempted = f", {progress.preempted} preempted and resumed" if progress.preempted else ""
    summary = (
        f"{progress.finished} trials finished ({progress.complete} complete, "
        f"{progress.pruned} pruned, {progress.failed} failed{preempted})"
    )
    if progress.best_value is not None:
        summary += f"; best {metric}={number(progress.best_value)} at trial {progress.best_trial}"
    if progress.pareto_front:
        summary += f"; Pareto front of {len(progress.pareto_front)} trial(s)"
    failure = f"{progress.failure or progress.outcome}: {summary}"
    if progress.outcome in FAILED_OUTCOMES:
        reason = _FAILURE_REASONS[progress.outcome]
        b.condition(ConditionType.FAILED, True, reason, failure)
        b.condition(ConditionType.SUCCEEDED, False, reason, "the study failed")
        b.condition(ConditionType.READY, False, ConditionReason.FAILED, summary)
    else:
        reason = (
            ConditionReason.BUDGET_SPENT
            if progress.outcome == "BudgetSpent"
            else ConditionReason.TIMED_OUT
        )
        b.condition(ConditionType.SUCCEEDED, True, reason, summary)
        b.condition(ConditionType.FAILED, False, reason, "the study succeeded")
        b.condition(ConditionType.READY, False, ConditionReason.SUCCEEDED, summary)
    b.condition(ConditionType.SUSPENDED, False, ConditionReason.FINISHED, "the study is finished")
    b.delete(b.runners, "the study is finished")
    b.delete(b.estimates, "the study is finished")
    b.count_runners(0)
    b.status.completion_time = b.old.completion_time or timestamp(b.now)
    b.status.sizing = b.old_sizing
    if b.flipped_on(ConditionType.SUCCEEDED):
        b.event("Normal", ConditionType.SUCCEEDED, summary)
    if b.flipped_on(ConditionType.FAILED):
        b.event("Warning", ConditionType.FAILED, failure)
    return b.plan()


#: The ``Failed`` condition's reason for each way failing trials end a study.
_FAILURE_REASONS = {
    "TooManyFailures": ConditionReason.TOO_MANY_FAILED_TRIALS,
    "ConsecutiveFailures": ConditionReason.CONSECUTIVE_FAILED_TRIALS,
}


def _runner_failures(b: PlanBuilder, max_runner_failures: int) -> bool:
    """Whether too many runner pods failed since the spec last changed (the study Fails)."""
    limit = max_runner_failures + b.parallelism
    if b.failures < limit:
        b.condition(ConditionType.FAILED, False, ConditionReason.RUNNING, "no failure")
        return False
    message = (
        f"{b.failures} runner pods failed since the spec last changed (limit {limit}); "
        "see the RunnerFailed events and the pods' logs, then edit the spec to retry"
    )
    b.condition(ConditionType.FAILED, True, ConditionReason.RUNNER_FAILURES, message)
    if b.flipped_on(ConditionType.FAILED):
        b.event("Warning", ConditionType.FAILED, message)
    return True


def _suspension(b: PlanBuilder) -> None:
    """The Suspended condition, and the Suspended and Resumed events when it flips."""
    if b.spec.suspend:
        b.condition(
            ConditionType.SUSPENDED,
            True,
            ConditionReason.SUSPENDED,
            "spec.suspend is true: runners drained",
        )
        if b.flipped_on(ConditionType.SUSPENDED):
            b.event(
                "Normal", ConditionType.SUSPENDED, "draining runners; running trials are released"
            )
    elif b.old.is_true(ConditionType.SUSPENDED):
        b.condition(
            ConditionType.SUSPENDED, False, ConditionReason.RESUMED, "spec.suspend is false"
        )
        b.event("Normal", ConditionReason.RESUMED, "creating runners again; the study continues")
    elif b.old.reason(ConditionType.SUSPENDED) == ConditionReason.RESUMED:
        b.condition(
            ConditionType.SUSPENDED, False, ConditionReason.RESUMED, "spec.suspend is false"
        )
    else:
        b.condition(
            ConditionType.SUSPENDED, False, ConditionReason.NOT_SUSPENDED, "spec.suspend is false"
        )


def _drained(b: PlanBuilder, alive: list[ObservedPod], crashed: bool) -> Plan:
    """Suspended, or failed by its runners: every pod deleted until the spec changes."""
    why = "suspended" if b.spec.suspend else "the study failed"
    b.delete(alive, why)
    b.delete(b.estimates, why)
    b.count_runners(0)
    b.status.sizing = b.old_sizing
    if b.spec.suspend:
        b.condition(ConditionType.READY, False, ConditionReason.SUSPENDED, "spec.suspend is true")
    elif crashed:
        b.condition(
            ConditionType.READY, False, ConditionReason.FAILED, "too many runner pods failed"
        )
    # Runners that kept failing to start: gave_up_starting() said why in Ready.
    return b.plan()


def invalid_spec(status: StudyStatus, generation: int, error: SpecError, now: dt.datetime) -> Plan:
    """The plan for a study whose spec does not validate: nothing to do but say why
    (``Ready=False InvalidSpec``, and a Warning event when the message changed)."""
    message = "; ".join(str(e) for e in error.errors)[:4000]
    ready, invalid = ConditionType.READY, ConditionReason.INVALID_SPEC
    conditions = set_condition(status.conditions, ready, False, invalid, message, generation, now)
    old = status.condition(ready)
    repeated = old is not None and old.reason == invalid and old.message == message
    events = () if repeated else (Event("Warning", invalid, message),)
    return Plan((), StudyStatus(conditions=conditions, observed_generation=generation), events)
