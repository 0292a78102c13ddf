"""Runners that cannot start: the reason shown, failed starts counted, back-off, giving up.

A runner pod says why it cannot start (:class:`~hpo_operator.reconcile._observe.StartFailure`).
The reason is shown in the pass that first sees it. It counts as a failed start when the pod
exits because its task does not load, or when the pod still shows it once it is older than
the back-off of its attempt (the kubelet retries pulls, mounts and missing Secrets by itself
meanwhile): the pod is then deleted and runners are created again only after the back-off. The
runners of one wave (created together, before the last failed start was counted) count once.
After :attr:`~hpo_operator.config.RunnerStartPolicy.attempts` failed starts in a row with the
same reason the study is Failed with that reason, until the spec changes. A trial that runs
or finishes starts the count over (a runner's container is ready before its task loads). The
count lives in ``status.runners.startFailure``, so a restarted operator goes on with it.
"""

from __future__ import annotations

import datetime as dt

from hpo_operator.config import RunnerStartPolicy
from hpo_operator.reconcile._observe import ObservedPod, StartFailure
from hpo_operator.reconcile._plan import DeletePod, PlanBuilder

from kubetune_api.status import (
    START_FAILURE_REASONS,
    ConditionType,
    RunnerStartFailure,
    TrialCounts,
    timestamp,
)
from kubetune_study.progress import StudyProgress

__all__ = ["count_failed_starts", "gave_up_starting", "note_runners_going", "shown_start_failure"]


def note_runners_going(b: PlanBuilder, progress: StudyProgress) -> None:
    """Start the count over once runners got going: a trial claimed or finished (a runner's
    container is ready before its task loads: it has no readiness probe). Also in the pass
    that sees the budget spent, so a finished study keeps no failed starts."""
    if progress.running or _finished(progress) > _finished_before(b.old.trials):
        b.start_failure = None


def count_failed_starts(
    b: PlanBuilder,
    progress: StudyProgress,
    alive: list[ObservedPod],
    policy: RunnerStartPolicy,
) -> list[ObservedPod]:
    """Count this pass's failed starts and delete their pods; set the back-off. Returns the
    pods still alive."""
    kept: list[ObservedPod] = []
    for pod in alive:
        failure = pod.start_failure
        if pod.deleting or failure is None or failure.reason not in START_FAILURE_REASONS:
            kept.append(pod)
        elif pod.phase == "Failed" or pod.age(b.now) >= policy.backoff(_attempts(b)):
            _count(b, pod, failure, policy)
            b.actions.append(DeletePod(pod.name, f"{failure.reason}: {failure.message}"))
        else:
            kept.append(pod)
    retry = b.start_failure.retry_time if b.start_failure is not None else None
    b.backing_off = retry is not None and b.now < dt.datetime.fromisoformat(retry)
    return kept


def gave_up_starting(b: PlanBuilder, policy: RunnerStartPolicy) -> bool:
    """Whether runners failed to start too often in a row: the study is then Failed with
    their reason (the Ready condition and the event say it too)."""
    streak = b.start_failure
    if streak is None or (streak.attempts or 0) < policy.attempts:
        return False
    reason = str(streak.reason)
    message = (
        f"runners failed to start {streak.attempts} times in a row: {streak.message}; "
        "fix it, then edit the spec to try again"
    )
    b.condition(ConditionType.FAILED, True, reason, message)
    b.condition(ConditionType.READY, False, reason, str(streak.message))
    if b.flipped_on(ConditionType.FAILED):
        b.event("Warning", ConditionType.FAILED, message)
    return True


def shown_start_failure(b: PlanBuilder, alive: list[ObservedPod]) -> tuple[str, str] | None:
    """The reason and message the Ready condition shows while runners cannot start: a pod's
    own, else the last failed start's while its back-off runs or its replacements start."""
    pod = next((p for p in alive if p.start_failure is not None and not p.deleting), None)
    if pod is not None and pod.start_failure is not None:
        if pod.start_failure.reason not in START_FAILURE_REASONS:
            return None  # Unschedulable: said as before
        message = f"runner {pod.name} cannot start: {pod.start_failure.message}"
        return str(pod.start_failure.reason), message + _attempts_note(b)
    streak = b.start_failure
    if streak is None or any(p.ready for p in alive):
        return None
    return str(streak.reason), f"{streak.message}{_attempts_note(b)}"


def _attempts(b: PlanBuilder) -> int:
    return (b.start_failure.attempts or 0) if b.start_failure is not None else 0


def _attempts_note(b: PlanBuilder) -> str:
    streak = b.start_failure
    if streak is None or not streak.attempts:
        return ""
    note = f" ({streak.attempts} failed start(s) in a row"
    if b.backing_off and streak.retry_time:
        note += f"; runners are created again at {streak.retry_time}"
    return note + ")"


def _count(
    b: PlanBuilder, pod: ObservedPod, failure: StartFailure, policy: RunnerStartPolicy
) -> None:
    """Count ``pod``'s failed start, unless a pod of its wave was counted already."""
    streak = b.start_failure
    message = f"runner {pod.name} cannot start: {failure.message}"
    same = streak is not None and streak.reason == failure.reason
    counted = streak.last_failure_time if streak is not None and same else None
    if counted and pod.created and pod.created <= dt.datetime.fromisoformat(counted):
        return  # its wave was counted
    attempts = (streak.attempts or 0) + 1 if same and streak is not None else 1
    b.start_failure = RunnerStartFailure(
        reason=str(failure.reason),
        message=message,
        attempts=attempts,
        last_failure_time=timestamp(b.now),
        retry_time=timestamp(b.now + dt.timedelta(seconds=policy.backoff(attempts))),
    )
    b.event(
        "Warning",
        str(failure.reason),
        f"{message} (failed start {attempts} of {policy.attempts})",
    )


def _finished(progress: StudyProgress) -> int:
    return progress.complete + progress.pruned + progress.failed


def _finished_before(trials: TrialCounts | None) -> int:
    if trials is None:
        return 0
    return (trials.complete or 0) + (trials.pruned or 0) + (trials.failed or 0)
