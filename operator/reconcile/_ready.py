"""The decision's last step: the ``Ready`` condition, why runners are not (all) ready, or that
they are."""

from __future__ import annotations

from hpo_operator.reconcile._observe import ObservedPod
from hpo_operator.reconcile._plan import (
    PlanBuilder,
    SizingInput,
)
from hpo_operator.reconcile._runners import usable
from hpo_operator.reconcile._start import shown_start_failure
from hpo_operator.sizing import (
    NoFit,
    PeakFailed,
    PeakPending,
    format_bytes,
)

from kubetune_api.status import (
    ConditionReason,
    ConditionType,
    StartFailureReason,
)
from kubetune_study.progress import StudyProgress

__all__ = ["ready"]


def ready(
    b: PlanBuilder,
    progress: StudyProgress,
    sizing: SizingInput,
    alive: list[ObservedPod],
    created: list[int],
) -> None:
    """The Ready condition: why runners are not (all) ready, or that they are."""
    assert b.status.runners is not None
    ready, desired = b.status.runners.ready or 0, b.status.runners.desired or 0
    stuck = next((p for p in b.estimates if p.start_failure and not p.deleting), None)
    if isinstance(sizing, PeakPending) and stuck is not None and stuck.start_failure is not None:
        # The estimate pod cannot start (the runners would not either): say why. It is not
        # replaced; the kubelet keeps trying, and the estimate runs once it can.
        message = f"the memory-estimate pod cannot start: {stuck.start_failure.message}"
        b.not_ready(str(stuck.start_failure.reason), message, "Warning")
    elif isinstance(sizing, PeakPending):
        b.not_ready(ConditionReason.ESTIMATING_MEMORY, sizing.reason)
    elif isinstance(sizing, PeakFailed):
        b.not_ready(ConditionReason.ESTIMATE_FAILED, sizing.message, "Warning")
    elif not isinstance(sizing, NoFit) and not usable(b, sizing) and b.floor_raised():
        # This pass raised the floor after an OOMKill; the next one sizes against it.
        b.not_ready(
            ConditionReason.RESIZING,
            f"a runner ran out of memory; replacements get at least {format_bytes(b.floor)}",
        )
    elif not isinstance(sizing, NoFit) and not usable(b, sizing) and b.trials_limit_lowered():
        b.not_ready(
            ConditionReason.RESIZING,
            "a runner's processes kept running out of memory; replacements run at most "
            f"{b.trials_limit} per device",
        )
    elif isinstance(sizing, NoFit) or not usable(b, sizing):
        message = sizing.reason if isinstance(sizing, NoFit) else "no larger resource after OOM"
        b.not_ready(ConditionReason.NO_FITTING_RESOURCE, message, "Warning")
    elif progress.outcome != "Running":
        b.not_ready(
            ConditionReason.FINISHING,
            f"every trial is claimed; waiting for {progress.active} running trial(s)",
        )
    elif waiting := b.status.runners.waiting_for_admission:
        _waiting_for_admission(b, ready, desired, waiting, alive)
    elif ready >= desired and not created:
        message = f"{ready}/{desired} runners ready"
        b.condition(ConditionType.READY, True, ConditionReason.RUNNERS_READY, message)
    elif failure := shown_start_failure(b, alive):
        reason, message = failure
        # Not twice: a failed start counted in this pass posted its own event.
        posted = any(e.reason == reason for e in b.events)
        b.not_ready(reason, message, None if posted else "Warning")
    elif pending := next((p.unschedulable for p in alive if p.unschedulable), None):
        message = f"runner pods cannot be scheduled: {pending}"
        b.not_ready(StartFailureReason.UNSCHEDULABLE, message)
    else:
        b.not_ready(ConditionReason.RUNNERS_STARTING, f"{ready}/{desired} runners ready")


def _waiting_for_admission(
    b: PlanBuilder, ready: int, desired: int, waiting: int, alive: list[ObservedPod]
) -> None:
    """Kueue holds some runner pods until its queue's quota admits them."""
    queue = b.spec.resources.queue_name or "its LocalQueue"
    message = f"{ready}/{desired} runners ready; {waiting} wait for admission by Kueue ({queue})"
    stopped = sum(p.deleting and p.stopped_by_kueue is not None for p in alive)
    if stopped:
        message += f"; {stopped} stopped by Kueue (preempted or evicted), their trials re-queued"
    b.not_ready(ConditionReason.WAITING_FOR_ADMISSION, message, "Normal")
