"""The decision as a short sequence of named steps over a :class:`PlanBuilder`."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from hpo_operator.config import RunnerStartPolicy
from hpo_operator.reconcile._observe import ObservedPod, last_line
from hpo_operator.reconcile._plan import (
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    Plan,
    PlanBuilder,
    WriteBest,
    WriteFront,
)
from hpo_operator.reconcile._start import (
    count_failed_starts,
    gave_up_starting,
    note_runners_going,
    shown_start_failure,
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
from kubetune_api.spec import StudySpec
from kubetune_api.status import (
    FRONT_LIMIT,
    MESSAGE_LIMIT,
    BestTrial,
    FrontTrial,
    ParetoFront,
    SizingStatus,
    StageStatus,
    StartFailureReason,
    StudyStatus,
    TelemetryStatus,
    TrialCounts,
    timestamp,
)
from kubetune_study.pareto import spread
from kubetune_study.progress import FAILED_OUTCOMES, StudyProgress
from kubetune_study.warmstart import WarmStartReport

__all__ = ["SizingInput", "decide"]

SizingInput = SizingDecision | NoFit | PeakPending | PeakFailed


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
    _record_progress(b, progress)
    _record_warm_start(b, warm_start)
    note_runners_going(b, progress)
    if progress.done:
        return _finished(b, progress)
    b.status.completion_time = None
    b.condition(
        "Succeeded", False, "Running", f"{progress.finished}/{progress.max_trials} trials finished"
    )
    alive = count_failed_starts(b, progress, _remove_ended_runners(b), start_policy)
    gave_up = gave_up_starting(b, start_policy)
    crashed = not gave_up and _runner_failures(b, max_runner_failures)
    _suspension(b)
    if spec.suspend or crashed or gave_up:
        return _drained(b, alive, crashed)
    _record_sizing(b, sizing)
    created = _create_runners(b, progress, sizing, alive)
    _ready(b, progress, sizing, alive, created)
    return b.plan()


def _storage_unavailable(b: PlanBuilder, error: str | None) -> Plan:
    """Keep what runs and what is known; create nothing; say why."""
    for name in ("trials", "best", "pareto_front", "stage", "trials_summary", "telemetry"):
        value = getattr(b.old, name)
        if value is not None:
            setattr(b.status, name, value)
    b.count_runners(b.parallelism)
    message = f"cannot read the study's storage: {error or 'unknown error'}"
    b.condition("Ready", False, "StorageUnavailable", message)
    if b.entered("Ready", "StorageUnavailable"):
        b.event("Warning", "StorageUnavailable", error or "cannot read the storage")
    return b.plan()


def _record_progress(b: PlanBuilder, progress: StudyProgress) -> None:
    """Trial counts, the best trial (and its ConfigMap when it changed), the stage."""
    spec = b.spec
    b.status.trials = TrialCounts(
        complete=progress.complete,
        pruned=progress.pruned,
        failed=progress.failed,
        preempted=progress.preempted,
        running=progress.running,
        waiting=progress.waiting,
        budget=progress.max_trials,
    )
    b.status.trials_summary = f"{progress.finished}/{progress.max_trials}"
    telemetry = progress.telemetry
    if telemetry.processes:
        b.status.telemetry = TelemetryStatus(
            overhead_seconds=_rounded(telemetry.mean_overhead_seconds),
            trials_per_process=_rounded(telemetry.trials_per_process),
            processes=telemetry.processes,
        )
    b.status.stage = StageStatus(
        current=progress.current_stage + 1, total=len(spec.stages) if spec.stages else 1
    )
    if spec.multi_objective:
        _record_front(b, progress)
    else:
        _record_best(b, progress)
    old_stage = b.old.stage.current if b.old.stage is not None else None
    if spec.stages and old_stage is not None and old_stage != progress.current_stage + 1:
        b.event(
            "Normal",
            "StageStarted",
            f"stage {progress.current_stage + 1} of {len(spec.stages)} "
            f"(groups {', '.join(spec.stages[progress.current_stage].groups)})",
        )


def _record_best(b: PlanBuilder, progress: StudyProgress) -> None:
    """The best trial, and its ConfigMap and event when it changed."""
    spec = b.spec
    best, value, params = progress.best_trial, progress.best_value, progress.best_params or {}
    if best is not None and value is not None:
        b.status.best = BestTrial(
            value=_number(value), trial=best, params={k: _param(v) for k, v in params.items()}
        )
        if best != (b.old.best.trial if b.old.best is not None else None):
            b.actions.append(WriteBest(value, dict(params), best))
            b.event(
                "Normal",
                "NewBestTrial",
                f"trial {best}: {spec.primary_objective.metric}={_number(value)} "
                f"with {_describe_params(params)}",
            )


def _record_front(b: PlanBuilder, progress: StudyProgress) -> None:
    """The Pareto front's size and at most FRONT_LIMIT of its trials; the whole front to the
    ConfigMap, and an event, when its trials changed."""
    objectives = b.spec.all_objectives
    front = progress.pareto_front
    digest = _front_digest([t.number for t in front])
    b.status.pareto_front = ParetoFront(
        size=len(front),
        digest=digest,
        trials=[
            FrontTrial(
                trial=t.number,
                values={o.metric: _number(v) for o, v in zip(objectives, t.values, strict=True)},
                params={k: _param(v) for k, v in t.params.items()},
            )
            for t in spread(front, FRONT_LIMIT)
        ],
    )
    old = b.old.pareto_front.digest if b.old.pareto_front is not None else None
    if front and digest != old:
        b.actions.append(WriteFront(front))
        listed = ", ".join(str(t.number) for t in spread(front, FRONT_LIMIT))
        more = " ..." if len(front) > FRONT_LIMIT else ""
        b.event("Normal", "ParetoFrontChanged", f"{len(front)} trial(s): {listed}{more}")


def _front_digest(numbers: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, numbers)).encode()).hexdigest()[:16]


def _record_warm_start(b: PlanBuilder, report: WarmStartReport | None) -> None:
    """``WarmStarted``: what the warm start carried over and what it left out, by name."""
    if report is None:
        return
    if report.source_missing:
        reason = "SourceNotFound"
    elif report.complete:
        reason = "Applied"
    else:
        reason = "PartlyApplied"
    message = report.summary()
    b.condition("WarmStarted", True, reason, message)
    old = b.old.condition("WarmStarted")
    if old is None or old.reason != reason or old.message != message[:MESSAGE_LIMIT]:
        b.event("Normal" if reason == "Applied" else "Warning", "WarmStarted", message)


def _finished(b: PlanBuilder, progress: StudyProgress) -> Plan:
    """Succeeded or Failed for good: every pod deleted, ``completionTime`` set."""
    metric = b.spec.primary_objective.metric
    preempted = f", {progress.preempted} preempted and resumed" if progress.preempted else ""
    summary = (
        f"{progress.finished} trials finished ({progress.complete} complete, "
        f"{progress.pruned} pruned, {progress.failed} failed{preempted})"
    )
    if progress.best_value is not None:
        summary += f"; best {metric}={_number(progress.best_value)} at trial {progress.best_trial}"
    if progress.pareto_front:
        summary += f"; Pareto front of {len(progress.pareto_front)} trial(s)"
    failure = f"{progress.failure or progress.outcome}: {summary}"
    if progress.outcome in FAILED_OUTCOMES:
        reason = _FAILURE_REASONS[progress.outcome]
        b.condition("Failed", True, reason, failure)
        b.condition("Succeeded", False, reason, "the study failed")
        b.condition("Ready", False, "Failed", summary)
    else:
        reason = "BudgetSpent" if progress.outcome == "BudgetSpent" else "TimedOut"
        b.condition("Succeeded", True, reason, summary)
        b.condition("Failed", False, reason, "the study succeeded")
        b.condition("Ready", False, "Succeeded", summary)
    b.condition("Suspended", False, "Finished", "the study is finished")
    b.delete(b.runners, "the study is finished")
    b.delete(b.estimates, "the study is finished")
    b.count_runners(0)
    b.status.completion_time = b.old.completion_time or timestamp(b.now)
    b.status.sizing = b.old_sizing
    if b.flipped_on("Succeeded"):
        b.event("Normal", "Succeeded", summary)
    if b.flipped_on("Failed"):
        b.event("Warning", "Failed", failure)
    return b.plan()


#: The ``Failed`` condition's reason for each way failing trials end a study.
_FAILURE_REASONS = {
    "TooManyFailures": "TooManyFailedTrials",
    "ConsecutiveFailures": "ConsecutiveFailedTrials",
}


def _remove_ended_runners(b: PlanBuilder) -> list[ObservedPod]:
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
                "OOMKilled",
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
            b.event("Warning", "RunnerFailed", f"runner {pod.name} {detail}")
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
        "TrialsPerDeviceLowered",
        f"the {pod.trials_per_device} runner processes of {pod.name} kept running out of "
        f"memory on {pod.resource or 'their device'}; replacements run at most "
        f"{b.trials_limit} per device",
    )


def _runner_failures(b: PlanBuilder, max_runner_failures: int) -> bool:
    """Whether too many runner pods failed since the spec last changed (the study Fails)."""
    limit = max_runner_failures + b.parallelism
    if b.failures < limit:
        b.condition("Failed", False, "Running", "no failure")
        return False
    message = (
        f"{b.failures} runner pods failed since the spec last changed (limit {limit}); "
        "see the RunnerFailed events and the pods' logs, then edit the spec to retry"
    )
    b.condition("Failed", True, "RunnerFailures", message)
    if b.flipped_on("Failed"):
        b.event("Warning", "Failed", message)
    return True


def _suspension(b: PlanBuilder) -> None:
    """The Suspended condition, and the Suspended and Resumed events when it flips."""
    if b.spec.suspend:
        b.condition("Suspended", True, "Suspended", "spec.suspend is true: runners drained")
        if b.flipped_on("Suspended"):
            b.event("Normal", "Suspended", "draining runners; running trials are released")
    elif b.old.is_true("Suspended"):
        b.condition("Suspended", False, "Resumed", "spec.suspend is false")
        b.event("Normal", "Resumed", "creating runners again; the study continues")
    elif b.old.reason("Suspended") == "Resumed":
        b.condition("Suspended", False, "Resumed", "spec.suspend is false")
    else:
        b.condition("Suspended", False, "NotSuspended", "spec.suspend is false")


def _drained(b: PlanBuilder, alive: list[ObservedPod], crashed: bool) -> Plan:
    """Suspended, or failed by its runners: every pod deleted until the spec changes."""
    why = "suspended" if b.spec.suspend else "the study failed"
    b.delete(alive, why)
    b.delete(b.estimates, why)
    b.count_runners(0)
    b.status.sizing = b.old_sizing
    if b.spec.suspend:
        b.condition("Ready", False, "Suspended", "spec.suspend is true")
    elif crashed:
        b.condition("Ready", False, "Failed", "too many runner pods failed")
    # Runners that kept failing to start: gave_up_starting() said why in Ready.
    return b.plan()


def _record_sizing(b: PlanBuilder, sizing: SizingInput) -> None:
    """``status.sizing``; the estimate pod created, replaced or deleted as the sizing needs."""
    b.status.sizing = _sizing_status(sizing, b.old_sizing, b.floor, b.trials_limit)
    if isinstance(sizing, PeakPending):
        stale = [p for p in b.estimates if p.estimate_key != sizing.key]
        b.delete(stale, "the spec changed")
        if not [p for p in b.estimates if p.estimate_key == sizing.key]:
            b.actions.append(CreateEstimatePod(sizing.key))
            if not stale:
                b.event("Normal", "EstimatingMemory", sizing.reason)
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
            b.event("Normal", "Sized", sizing.reason)


def _sizing_status(
    sizing: SizingInput, old: SizingStatus, floor: int, trials_limit: int | None
) -> SizingStatus:
    fields: dict[str, Any] = {"floor_bytes": floor} if floor else {}
    if trials_limit is not None:
        fields["trials_per_device_limit"] = trials_limit
    if isinstance(sizing, SizingDecision):
        fields.update(
            resource=sizing.resource,
            quantity=sizing.quantity,
            accelerator=sizing.kind,
            memory_bytes=sizing.memory_bytes,
            trials_per_device=sizing.trials_per_device,
            packing=sizing.packing,
        )
    if isinstance(sizing, SizingDecision | NoFit):
        fields.update(
            required_bytes=sizing.required_bytes,
            peak_bytes=sizing.peak.bytes,
            method=sizing.peak.method,
            reason=sizing.reason,
        )
        if sizing.peak.method not in ("Spec", "Memory") and old.estimate_key:
            fields["estimate_key"] = old.estimate_key
    elif isinstance(sizing, PeakFailed):
        fields["reason"] = f"memory estimate failed: {sizing.message}"
    else:
        fields["reason"] = sizing.reason
    return SizingStatus(**fields)


def _usable(b: PlanBuilder, sizing: SizingInput) -> bool:
    """Whether runners can be created with ``sizing`` (it clears the OOM floor and runs no
    more processes per device than the limit)."""
    return (
        isinstance(sizing, SizingDecision)
        and sizing.memory_bytes >= b.floor
        and sizing.trials_per_device <= (b.trials_limit or sizing.trials_per_device)
    )


def _create_runners(
    b: PlanBuilder, progress: StudyProgress, sizing: SizingInput, alive: list[ObservedPod]
) -> list[int]:
    """Runners ``0..parallelism-1``: extra ones deleted, missing ones created while trials
    remain to be claimed. Returns the indexes created."""
    claimable = progress.outcome == "Running"
    # Once every trial is claimed the study wants only the runners still finishing one.
    finishing = sum(not p.deleting and (p.index or 0) < b.parallelism for p in alive)
    # A pod deleted in this pass still holds its name: it is replaced on a later pass.
    present = {p.index for p in b.runners if p.index is not None}
    for pod in alive:
        if not pod.deleting and (pod.index is None or pod.index >= b.parallelism):
            b.actions.append(DeletePod(pod.name, "parallelism lowered"))
    created: list[int] = []
    can_create = isinstance(sizing, SizingDecision) and _usable(b, sizing) and not b.backing_off
    if claimable and isinstance(sizing, SizingDecision) and can_create:
        created = [i for i in range(b.parallelism) if i not in present]
        b.actions.extend(CreateRunner(index, sizing) for index in created)
        if created:
            b.event(
                "Normal",
                "RunnersCreated",
                f"created runner(s) {', '.join(str(i) for i in created)} with "
                f"{sizing.resource}={sizing.quantity}"
                + (
                    f", {sizing.trials_per_device} runner processes each"
                    if sizing.trials_per_device > 1
                    else ""
                ),
            )
    b.count_runners(b.parallelism if claimable else finishing)
    return created


def _ready(
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
        reason = str(stuck.start_failure.reason)
        message = f"the memory-estimate pod cannot start: {stuck.start_failure.message}"
        b.condition("Ready", False, reason, message)
        if b.entered("Ready", reason):
            b.event("Warning", reason, message)
    elif isinstance(sizing, PeakPending):
        b.condition("Ready", False, "EstimatingMemory", sizing.reason)
    elif isinstance(sizing, PeakFailed):
        b.condition("Ready", False, "EstimateFailed", sizing.message)
        if b.entered("Ready", "EstimateFailed"):
            b.event("Warning", "EstimateFailed", sizing.message)
    elif not isinstance(sizing, NoFit) and not _usable(b, sizing) and b.floor_raised():
        # This pass raised the floor after an OOMKill; the next one sizes against it.
        b.condition(
            "Ready",
            False,
            "Resizing",
            f"a runner ran out of memory; replacements get at least {format_bytes(b.floor)}",
        )
    elif not isinstance(sizing, NoFit) and not _usable(b, sizing) and b.trials_limit_lowered():
        b.condition(
            "Ready",
            False,
            "Resizing",
            "a runner's processes kept running out of memory; replacements run at most "
            f"{b.trials_limit} per device",
        )
    elif isinstance(sizing, NoFit) or not _usable(b, sizing):
        message = sizing.reason if isinstance(sizing, NoFit) else "no larger resource after OOM"
        b.condition("Ready", False, "NoFittingResource", message)
        if b.entered("Ready", "NoFittingResource"):
            b.event("Warning", "NoFittingResource", message)
    elif progress.outcome != "Running":
        b.condition(
            "Ready",
            False,
            "Finishing",
            f"every trial is claimed; waiting for {progress.active} running trial(s)",
        )
    elif waiting := b.status.runners.waiting_for_admission:
        _waiting_for_admission(b, ready, desired, waiting, alive)
    elif ready >= desired and not created:
        b.condition("Ready", True, "RunnersReady", f"{ready}/{desired} runners ready")
    elif failure := shown_start_failure(b, alive):
        reason, message = failure
        b.condition("Ready", False, reason, message)
        if b.entered("Ready", reason) and not any(e.reason == reason for e in b.events):
            b.event("Warning", reason, message)
    elif pending := next((p.unschedulable for p in alive if p.unschedulable), None):
        b.condition(
            "Ready",
            False,
            StartFailureReason.UNSCHEDULABLE,
            f"runner pods cannot be scheduled: {pending}",
        )
    else:
        b.condition("Ready", False, "RunnersStarting", f"{ready}/{desired} runners ready")


def _waiting_for_admission(
    b: PlanBuilder, ready: int, desired: int, waiting: int, alive: list[ObservedPod]
) -> None:
    """Kueue holds some runner pods until its queue's quota admits them."""
    queue = b.spec.resources.queue_name or "its LocalQueue"
    message = f"{ready}/{desired} runners ready; {waiting} wait for admission by Kueue ({queue})"
    stopped = sum(p.deleting and p.stopped_by_kueue is not None for p in alive)
    if stopped:
        message += f"; {stopped} stopped by Kueue (preempted or evicted), their trials re-queued"
    b.condition("Ready", False, "WaitingForAdmission", message)
    if b.entered("Ready", "WaitingForAdmission"):
        b.event("Normal", "WaitingForAdmission", message)


def _number(value: float) -> str:
    return f"{value:.6g}"


def _rounded(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"


def _param(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _describe_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_param(v)}" for k, v in sorted(params.items())) or "no parameters"
