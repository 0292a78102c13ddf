"""The decision's steps over runner pods: those that ended, the sizing they get, and the ones to
create or delete."""

from __future__ import annotations

from typing import Any

from hpo_operator.reconcile._observe import ObservedPod, last_line
from hpo_operator.reconcile._plan import (
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    EventReason,
    PlanBuilder,
    SizingInput,
)
from hpo_operator.sizing import (
    NoFit,
    PeakFailed,
    PeakPending,
    SizingDecision,
    format_bytes,
    lowered_trials_per_device,
    next_floor,
)

from kubetune_api.contract import OUT_OF_MEMORY_EXIT_CODE
from kubetune_api.status import (
    ConditionReason,
    GpuPeakStatus,
    SizingStatus,
)
from kubetune_study.progress import StudyProgress

__all__ = ["create_runners", "record_sizing", "remove_ended_runners", "usable"]

#: The fields of ``status.sizing`` a :class:`SizingDecision` has under the same name.
_DECISION_FIELDS = (
    "resource",
    "quantity",
    "memory_bytes",
    "pods",
    "trials_per_device",
    "packing",
    "precision",
)


def remove_ended_runners(b: PlanBuilder) -> list[ObservedPod]:
    """Delete runner pods that ended (an OOMKilled one raises the floor, a failed one counts
    as a failure); the pods still alive (or being deleted) are returned, with those that failed
    to start (:mod:`._start` counts them)."""
    alive: list[ObservedPod] = []
    for pod in b.runners:
        if pod.deleting:
            alive.append(pod)
        elif pod.phase == "Failed" and pod.oom_killed:
            if pod.memory_bytes:
                b.floor = max(b.floor, next_floor(pod.kind or "CPU", pod.memory_bytes))
            b.actions.append(DeletePod(pod.name, "OOMKilled"))
            b.event(
                "Warning",
                EventReason.OOM_KILLED,
                f"runner {pod.name} ran out of memory on {pod.resource or 'its resource'}"
                f"; replacements need at least {format_bytes(b.floor)}",
            )
        elif pod.phase == "Failed" and _processes_ran_out_of_memory(pod):
            _lower_trials_per_device(b, pod)
        elif pod.phase == "Failed" and pod.start_failure is not None:
            alive.append(pod)
        elif pod.phase == "Failed":
            b.failures += 1
            detail = f"exit code {pod.exit_code}" if pod.exit_code is not None else "failed"
            if pod.message:
                detail += f": {last_line(pod.message, 300)}"
            b.actions.append(DeletePod(pod.name, "runner failed"))
            b.event("Warning", EventReason.RUNNER_FAILED, f"runner {pod.name} {detail}")
        elif pod.phase == "Succeeded":
            b.actions.append(DeletePod(pod.name, "runner finished"))
        else:
            alive.append(pod)
    return alive


def _processes_ran_out_of_memory(pod: ObservedPod) -> bool:
    """Whether the runner processes sharing ``pod``'s device kept running out of memory."""
    return pod.exit_code == OUT_OF_MEMORY_EXIT_CODE and pod.trials_per_device > 1


def _lower_trials_per_device(b: PlanBuilder, pod: ObservedPod) -> None:
    """Replacements of a pod whose processes kept running out of memory run fewer per
    device (not a runner failure: the trials they held were released and are retried)."""
    lowered = lowered_trials_per_device(pod.trials_per_device)
    b.trials_limit = min(b.trials_limit or lowered, lowered)
    b.actions.append(DeletePod(pod.name, "its processes kept running out of memory"))
    b.event(
        "Warning",
        EventReason.TRIALS_PER_DEVICE_LOWERED,
        f"the {pod.trials_per_device} runner processes of {pod.name} kept running out of "
        f"memory on {pod.resource or 'their device'}; replacements run at most "
        f"{b.trials_limit} per device",
    )


def record_sizing(b: PlanBuilder, sizing: SizingInput) -> None:
    """``status.sizing``; the estimate pod created, replaced or deleted as the sizing needs."""
    b.status.sizing = _sizing_status(sizing, b.old_sizing, b.floor, b.trials_limit)
    if isinstance(sizing, PeakPending):
        stale = [p for p in b.estimates if p.estimate_key != sizing.key]
        b.delete(stale, "the spec changed")
        if not [p for p in b.estimates if p.estimate_key == sizing.key]:
            b.actions.append(CreateEstimatePod(sizing.key))
            if not stale:
                b.event("Normal", ConditionReason.ESTIMATING_MEMORY, sizing.reason)
        b.status.sizing.estimate_key = sizing.key
    elif isinstance(sizing, PeakFailed):
        b.status.sizing.estimate_key = sizing.key
    else:
        current = [p for p in b.estimates if not p.deleting]
        if current and current[0].estimate_key:
            b.status.sizing.estimate_key = current[0].estimate_key
        b.delete(b.estimates, "estimate recorded")
        old = b.old_sizing
        if isinstance(sizing, SizingDecision) and (
            old.resource != sizing.resource
            or (old.trials_per_device or 1) != sizing.trials_per_device
        ):
            b.event("Normal", EventReason.SIZED, sizing.reason)


def _processes_text(counts: list[int]) -> str:
    """The runner processes of the pods created, for their event."""
    if max(counts) == 1:
        return ""
    if len(set(counts)) == 1:
        return f", {counts[0]} runner processes each"
    return f", {' + '.join(str(n) for n in counts)} runner processes"


def _sizing_status(
    sizing: SizingInput, old: SizingStatus, floor: int, trials_limit: int | None
) -> SizingStatus:
    fields: dict[str, Any] = {"floor_bytes": floor} if floor else {}
    if trials_limit is not None:
        fields["trials_per_device_limit"] = trials_limit
    if isinstance(sizing, SizingDecision):
        fields.update({name: getattr(sizing, name) for name in _DECISION_FIELDS})
        fields["accelerator"] = sizing.kind
    if isinstance(sizing, SizingDecision | NoFit):
        fields.update(
            required_bytes=sizing.required_bytes,
            peak_bytes=sizing.peak.bytes,
            method=sizing.peak.method,
            reason=sizing.reason,
        )
        if sizing.peak.gpu:
            fields["gpu_peaks"] = [
                GpuPeakStatus(
                    precision=g.precision,
                    full_batch_peak_bytes=g.full_batch_bytes,
                    micro_batch_peak_bytes=g.micro_batch_bytes,
                )
                for g in sizing.peak.gpu
            ]
        if sizing.peak.method not in ("Spec", "Memory") and old.estimate_key:
            fields["estimate_key"] = old.estimate_key
    elif isinstance(sizing, PeakFailed):
        fields["reason"] = f"memory estimate failed: {sizing.message}"
    else:
        fields["reason"] = sizing.reason
    return SizingStatus(**fields)


def usable(b: PlanBuilder, sizing: SizingInput) -> bool:
    """Whether runners can be created with ``sizing`` (it clears the OOM floor and runs no
    more processes per device than the limit)."""
    return (
        isinstance(sizing, SizingDecision)
        and sizing.memory_bytes >= b.floor
        and sizing.trials_per_device <= (b.trials_limit or sizing.trials_per_device)
    )


def create_runners(
    b: PlanBuilder, progress: StudyProgress, sizing: SizingInput, alive: list[ObservedPod]
) -> list[int]:
    """Runners ``0..pods-1`` of the sizing decision, running ``parallelism`` trials at once:
    extra ones deleted, and those whose number of processes is no longer their share (the
    parallelism or the layout changed); missing ones created while trials remain to be
    claimed. Returns the indexes created."""
    claimable = progress.outcome == "Running"
    decided = sizing if isinstance(sizing, SizingDecision) and usable(b, sizing) else None
    pods = decided.pods if decided is not None else b.runner_pods
    # Once every trial is claimed the study wants only the runners still finishing one.
    finishing = sum(not p.deleting and (p.index or 0) < pods for p in alive)
    # A pod deleted in this pass still holds its name: it is replaced on a later pass.
    present = {p.index for p in b.runners if p.index is not None}
    for pod in alive:
        if pod.deleting:
            continue
        if pod.index is None or pod.index >= pods:
            b.actions.append(DeletePod(pod.name, "parallelism lowered"))
        elif decided is not None and pod.trials_per_device != decided.processes(pod.index):
            # Its trials are preempted and retried (from their last fold) by the replacement.
            b.actions.append(DeletePod(pod.name, "parallelism or layout changed"))
    created: list[int] = []
    if claimable and decided is not None and not b.backing_off:
        created = [i for i in range(decided.pods) if i not in present]
        b.actions.extend(CreateRunner(index, decided) for index in created)
        if created:
            b.event(
                "Normal",
                EventReason.RUNNERS_CREATED,
                f"created runner(s) {', '.join(str(i) for i in created)} with "
                f"{decided.resource}={decided.quantity}"
                + _processes_text([decided.processes(i) for i in created]),
            )
    b.count_runners(pods if claimable else finishing)
    return created
