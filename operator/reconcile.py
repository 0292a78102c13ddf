"""The reconcile decision: given what is wanted and what is observed, what to do (pure).

:func:`decide` takes the validated spec, the current status, the observed child pods, the
study's progress (read from the Optuna storage) and the sizing result, and returns a
:class:`Plan`: the actions to take, the new status and the events to emit. It does no I/O, so
every state transition is unit-tested without a cluster; :mod:`hpo_operator.handlers` only
gathers the inputs and carries the plan out.

Rules, in order:
    * storage unreadable: keep what runs, create nothing, ``Ready=False StorageUnavailable``;
    * the study is done (budget spent, timed out or too many failed trials, nothing in
      flight): ``Succeeded`` or ``Failed``, every pod deleted, ``completionTime`` set;
    * too many runner pods failed (not OOMKilled) since the spec last changed:
      ``Failed=True RunnerFailures`` and runners deleted, until the spec is edited;
    * ``spec.suspend``: every runner deleted (their trials are released and retried later);
    * sizing: an estimate pod runs when the peak memory is unknown; nothing fits →
      ``Ready=False NoFittingResource`` and no new runners;
    * runners: indexes ``0..parallelism-1``; extra indexes are deleted; Failed and Succeeded
      pods are deleted (and so replaced on a later pass while the study still runs); an
      OOMKilled runner raises the memory floor so replacements get the next larger resource;
      missing runners are created only while the study still has trials to claim.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hpo_operator.manifests import (
    COMPONENT_ESTIMATE,
    COMPONENT_LABEL,
    COMPONENT_RUNNER,
    ESTIMATE_KEY_ANNOTATION,
    KIND_ANNOTATION,
    MEMORY_ANNOTATION,
    RESOURCE_ANNOTATION,
    STUDY_LABEL,
    runner_index,
)
from hpo_operator.sizing import (
    NoFit,
    PeakFailed,
    PeakPending,
    SizingDecision,
    format_bytes,
    next_floor,
)

from trial_runner.progress import StudyProgress
from trial_runner.spec import StudySpec

__all__ = [
    "CONDITION_TYPES",
    "Action",
    "CreateEstimatePod",
    "CreateRunner",
    "DeletePod",
    "Event",
    "ObservedPod",
    "Plan",
    "SizingInput",
    "WriteBest",
    "decide",
    "observe_pod",
    "set_condition",
]

CONDITION_TYPES = ("Ready", "Succeeded", "Failed", "Suspended")
SizingInput = SizingDecision | NoFit | PeakPending | PeakFailed


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class ObservedPod:
    """What the decision needs to know of one child pod."""

    name: str
    component: str
    index: int | None = None
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    kind: str | None = None
    resource: str | None = None
    memory_bytes: int | None = None
    oom_killed: bool = False
    exit_code: int | None = None
    message: str = ""
    unschedulable: str | None = None
    estimate_key: str | None = None


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod:
    """An :class:`ObservedPod` from a Pod as the API returns it (a plain mapping)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name", ""))
    container_statuses = status.get("containerStatuses") or []
    terminated: Mapping[str, Any] = {}
    ready = False
    for cs in container_statuses:
        state = cs.get("state") or {}
        if state.get("terminated"):
            terminated = state["terminated"]
        ready = bool(cs.get("ready"))
    unschedulable = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            unschedulable = str(cond.get("message") or cond.get("reason") or "unschedulable")
    memory = annotations.get(MEMORY_ANNOTATION)
    exit_code = terminated.get("exitCode")
    oom = terminated.get("reason") == "OOMKilled" or status.get("reason") == "OOMKilled"
    return ObservedPod(
        name=name,
        component=str(labels.get(COMPONENT_LABEL, "")),
        index=runner_index(str(labels.get(STUDY_LABEL, "")), name),
        phase=str(status.get("phase") or "Pending"),
        ready=ready and status.get("phase") == "Running",
        deleting=bool(meta.get("deletionTimestamp")),
        kind=annotations.get(KIND_ANNOTATION),
        resource=annotations.get(RESOURCE_ANNOTATION),
        memory_bytes=int(memory) if memory and str(memory).isdigit() else None,
        oom_killed=oom,
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        message=str(terminated.get("message") or "").strip(),
        unschedulable=unschedulable,
        estimate_key=annotations.get(ESTIMATE_KEY_ANNOTATION),
    )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class CreateRunner:
    index: int
    sizing: SizingDecision


@dataclass(frozen=True)
class CreateEstimatePod:
    key: str


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str


@dataclass(frozen=True)
class WriteBest:
    value: float
    params: Mapping[str, Any]
    trial: int


Action = CreateRunner | CreateEstimatePod | DeletePod | WriteBest


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to do: actions in order, then the status to write, then the events to post."""

    actions: tuple[Action, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()


# --------------------------------------------------------------------------- conditions


def _timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when status flips."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        same = cond.get("status") == value and cond.get("lastTransitionTime")
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": cond["lastTransitionTime"] if same else _timestamp(now),
                "observedGeneration": generation,
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": _timestamp(now),
                "observedGeneration": generation,
            }
        )
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(str(c.get("type")), len(order)))


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _is_true(status: Mapping[str, Any], type_: str) -> bool:
    return _condition(status, type_).get("status") == "True"


# --------------------------------------------------------------------------- the decision


class _Builder:
    """Accumulates one plan; keeps :func:`decide` readable."""

    def __init__(self, status: Mapping[str, Any], generation: int, now: dt.datetime) -> None:
        self.old = status
        self.generation = generation
        self.now = now
        self.conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.status: dict[str, Any] = {}

    def condition(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions, type_, value, reason, message, self.generation, self.now
        )

    def flipped_on(self, type_: str) -> bool:
        """Whether ``type_`` is True now and was not before this plan."""
        now = next((c for c in self.conditions if c["type"] == type_), {})
        return now.get("status") == "True" and not _is_true(self.old, type_)

    def entered(self, type_: str, reason: str) -> bool:
        """Whether ``type_`` now has ``reason`` and had another one before this plan."""
        now = next((c for c in self.conditions if c["type"] == type_), {})
        return now.get("reason") == reason and _condition(self.old, type_).get("reason") != reason

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def plan(self) -> Plan:
        self.status["conditions"] = self.conditions
        self.status["observedGeneration"] = self.generation
        return Plan(tuple(self.actions), self.status, tuple(self.events))


def _trial_status(spec: StudySpec, progress: StudyProgress) -> dict[str, Any]:
    stages = len(spec.stages) if spec.stages else 1
    out: dict[str, Any] = {
        "trials": {
            "complete": progress.complete,
            "pruned": progress.pruned,
            "failed": progress.failed,
            "running": progress.running,
            "waiting": progress.waiting,
            "budget": progress.max_trials,
        },
        "trialsSummary": f"{progress.finished}/{progress.max_trials}",
        "stage": {"current": progress.current_stage + 1, "total": stages},
    }
    if progress.best_trial is not None and progress.best_value is not None:
        out["best"] = {
            "value": _number(progress.best_value),
            "trial": progress.best_trial,
            "params": {k: _param(v) for k, v in (progress.best_params or {}).items()},
        }
    return out


def _number(value: float) -> str:
    return f"{value:.6g}"


def _param(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _sizing_status(sizing: SizingInput, old: Mapping[str, Any], floor: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if floor:
        out["floorBytes"] = floor
    if isinstance(sizing, SizingDecision):
        out.update(
            {
                "resource": sizing.resource,
                "quantity": sizing.quantity,
                "accelerator": sizing.kind,
                "memoryBytes": sizing.memory_bytes,
                "requiredBytes": sizing.required_bytes,
                "peakBytes": sizing.peak.bytes,
                "method": sizing.peak.method,
                "reason": sizing.reason,
            }
        )
    elif isinstance(sizing, NoFit):
        out.update(
            {
                "requiredBytes": sizing.required_bytes,
                "peakBytes": sizing.peak.bytes,
                "method": sizing.peak.method,
                "reason": sizing.reason,
            }
        )
    elif isinstance(sizing, PeakFailed):
        out["reason"] = f"memory estimate failed: {sizing.message}"
    else:
        out["reason"] = sizing.reason
    if isinstance(sizing, SizingDecision | NoFit) and sizing.peak.method not in ("Spec", "Memory"):
        key = old.get("estimateKey")
        if key:
            out["estimateKey"] = key
    return out


def decide(
    spec: StudySpec,
    status: Mapping[str, Any],
    generation: int,
    children: Sequence[ObservedPod],
    progress: StudyProgress | None,
    sizing: SizingInput,
    now: dt.datetime,
    *,
    storage_error: str | None = None,
    max_runner_failures: int = 5,
) -> Plan:
    """The plan for one study at one moment (see the module docstring for the rules).

    Args:
        spec: The validated spec.
        status: The study's current ``status`` (``{}`` for a new study).
        generation: ``metadata.generation``; written as ``observedGeneration``.
        children: The study's pods.
        progress: The study's progress from the storage; ``None`` when it cannot be read.
        sizing: The sizing decision, or why there is none yet (estimate pending or failed).
        now: The current time (for condition transition times and start/completion times).
        storage_error: Why the storage cannot be read, when ``progress`` is ``None``.
        max_runner_failures: Failed runner pods (on top of the parallelism) after which the
            study is Failed; counted since the spec last changed.
    """
    b = _Builder(status, generation, now)
    runners = sorted(
        (p for p in children if p.component == COMPONENT_RUNNER),
        key=lambda p: (p.index is None, p.index or 0, p.name),
    )
    estimates = [p for p in children if p.component == COMPONENT_ESTIMATE]
    b.status["startTime"] = status.get("startTime") or _timestamp(now)
    old_runners = status.get("runners") or {}
    same_spec = status.get("observedGeneration") == generation
    failures = int(old_runners.get("failedPods", 0)) if same_spec else 0
    old_sizing = status.get("sizing") or {}
    floor = int(old_sizing.get("floorBytes", 0) or 0)
    parallelism = spec.resources.parallelism

    def delete_all(pods: Sequence[ObservedPod], reason: str) -> None:
        for pod in pods:
            if not pod.deleting:
                b.actions.append(DeletePod(pod.name, reason))

    def runner_counts(desired: int) -> None:
        ready = sum(p.ready and not p.deleting for p in runners)
        b.status["runners"] = {
            "desired": desired,
            "ready": ready,
            "active": sum(not p.deleting and p.phase in ("Pending", "Running") for p in runners),
            "failedPods": failures,
        }
        b.status["runnersSummary"] = f"{ready}/{desired}"

    # ---------------------------------------------------------------- storage unreadable
    if progress is None:
        b.status.update({k: v for k, v in status.items() if k in ("trials", "best", "stage")})
        if "trialsSummary" in status:
            b.status["trialsSummary"] = status["trialsSummary"]
        runner_counts(parallelism)
        b.condition(
            "Ready",
            False,
            "StorageUnavailable",
            f"cannot read the study's storage: {storage_error or 'unknown error'}",
        )
        if b.entered("Ready", "StorageUnavailable"):
            b.event("Warning", "StorageUnavailable", storage_error or "cannot read the storage")
        return b.plan()

    b.status.update(_trial_status(spec, progress))
    best_trial = progress.best_trial
    old_best = (status.get("best") or {}).get("trial")
    if best_trial is not None and progress.best_value is not None and best_trial != old_best:
        b.actions.append(
            WriteBest(progress.best_value, dict(progress.best_params or {}), best_trial)
        )
        b.event(
            "Normal",
            "NewBestTrial",
            f"trial {best_trial}: {spec.objective.metric}={_number(progress.best_value)} "
            f"with {_describe_params(progress.best_params or {})}",
        )
    old_stage = (status.get("stage") or {}).get("current")
    if spec.stages and old_stage is not None and old_stage != progress.current_stage + 1:
        b.event(
            "Normal",
            "StageStarted",
            f"stage {progress.current_stage + 1} of {len(spec.stages)} "
            f"(groups {', '.join(spec.stages[progress.current_stage].groups)})",
        )

    # ---------------------------------------------------------------- done
    if progress.done:
        summary = (
            f"{progress.finished} trials finished ({progress.complete} complete, "
            f"{progress.pruned} pruned, {progress.failed} failed)"
        )
        if progress.best_value is not None:
            summary += (
                f"; best {spec.objective.metric}={_number(progress.best_value)} "
                f"at trial {progress.best_trial}"
            )
        if progress.outcome == "TooManyFailures":
            b.condition(
                "Failed", True, "TooManyFailedTrials", f"maxFailedTrials reached: {summary}"
            )
            b.condition("Succeeded", False, "TooManyFailedTrials", "the study failed")
            b.condition("Ready", False, "Failed", summary)
        else:
            reason = "BudgetSpent" if progress.outcome == "BudgetSpent" else "TimedOut"
            b.condition("Succeeded", True, reason, summary)
            b.condition("Failed", False, reason, "the study succeeded")
            b.condition("Ready", False, "Succeeded", summary)
        b.condition("Suspended", False, "Finished", "the study is finished")
        delete_all(runners, "the study is finished")
        delete_all(estimates, "the study is finished")
        runner_counts(0)
        b.status["completionTime"] = status.get("completionTime") or _timestamp(now)
        b.status["sizing"] = dict(old_sizing)
        if b.flipped_on("Succeeded"):
            b.event("Normal", "Succeeded", summary)
        if b.flipped_on("Failed"):
            b.event("Warning", "Failed", f"maxFailedTrials reached: {summary}")
        return b.plan()

    b.status["completionTime"] = None
    b.condition(
        "Succeeded", False, "Running", f"{progress.finished}/{progress.max_trials} trials finished"
    )

    # ---------------------------------------------------------------- runner pods that ended
    alive: list[ObservedPod] = []
    for pod in runners:
        if pod.deleting:
            alive.append(pod)
            continue
        if pod.phase == "Failed" and pod.oom_killed:
            if pod.memory_bytes:
                floor = max(floor, next_floor(pod.kind or "CPU", pod.memory_bytes))
            b.actions.append(DeletePod(pod.name, "OOMKilled"))
            b.event(
                "Warning",
                "OOMKilled",
                f"runner {pod.name} ran out of memory on {pod.resource or 'its resource'}"
                f"; replacements need at least {format_bytes(floor)}",
            )
        elif pod.phase == "Failed":
            failures += 1
            detail = f"exit code {pod.exit_code}" if pod.exit_code is not None else "failed"
            if pod.message:
                detail += f": {pod.message.splitlines()[-1][:300]}"
            b.actions.append(DeletePod(pod.name, "runner failed"))
            b.event("Warning", "RunnerFailed", f"runner {pod.name} {detail}")
        elif pod.phase == "Succeeded":
            b.actions.append(DeletePod(pod.name, "runner finished"))
        else:
            alive.append(pod)

    limit = max_runner_failures + parallelism
    crashed = failures >= limit
    if crashed:
        message = (
            f"{failures} runner pods failed since the spec last changed (limit {limit}); "
            "see the RunnerFailed events and the pods' logs, then edit the spec to retry"
        )
        b.condition("Failed", True, "RunnerFailures", message)
        if b.flipped_on("Failed"):
            b.event("Warning", "Failed", message)
    else:
        b.condition("Failed", False, "Running", "no failure")

    # ---------------------------------------------------------------- suspend
    if spec.suspend:
        b.condition("Suspended", True, "Suspended", "spec.suspend is true: runners drained")
        if b.flipped_on("Suspended"):
            b.event("Normal", "Suspended", "draining runners; running trials are released")
    elif _is_true(status, "Suspended"):
        b.condition("Suspended", False, "Resumed", "spec.suspend is false")
        b.event("Normal", "Resumed", "creating runners again; the study continues")
    elif _condition(status, "Suspended").get("reason") == "Resumed":
        b.condition("Suspended", False, "Resumed", "spec.suspend is false")
    else:
        b.condition("Suspended", False, "NotSuspended", "spec.suspend is false")

    if spec.suspend or crashed:
        delete_all(alive, "suspended" if spec.suspend else "too many runner failures")
        delete_all(estimates, "suspended" if spec.suspend else "failed")
        runner_counts(0)
        b.status["sizing"] = dict(old_sizing)
        if spec.suspend:
            b.condition("Ready", False, "Suspended", "spec.suspend is true")
        else:
            b.condition("Ready", False, "Failed", "too many runner pods failed")
        return b.plan()

    # ---------------------------------------------------------------- sizing
    b.status["sizing"] = _sizing_status(sizing, old_sizing, floor)
    if isinstance(sizing, PeakPending):
        stale = [p for p in estimates if p.estimate_key != sizing.key]
        delete_all(stale, "the spec changed")
        if not [p for p in estimates if p.estimate_key == sizing.key]:
            b.actions.append(CreateEstimatePod(sizing.key))
            if not stale:
                b.event("Normal", "EstimatingMemory", sizing.reason)
        b.status["sizing"]["estimateKey"] = sizing.key
    elif isinstance(sizing, PeakFailed):
        b.status["sizing"]["estimateKey"] = sizing.key
    else:
        current = [p for p in estimates if not p.deleting]
        if current and current[0].estimate_key:
            b.status["sizing"]["estimateKey"] = current[0].estimate_key
        delete_all(estimates, "estimate recorded")
        old_reason = old_sizing.get("resource")
        if isinstance(sizing, SizingDecision) and old_reason != sizing.resource:
            b.event("Normal", "Sized", sizing.reason)

    # ---------------------------------------------------------------- runners
    claimable = progress.outcome == "Running"
    # Once every trial is claimed the study wants only the runners still finishing one.
    finishing = sum(not p.deleting and (p.index or 0) < parallelism for p in alive)
    desired = parallelism if claimable else finishing
    # A pod deleted in this pass still holds its name: it is replaced on a later pass.
    present = {p.index for p in runners if p.index is not None}
    for pod in alive:
        if pod.deleting:
            continue
        if pod.index is None or pod.index >= parallelism:
            b.actions.append(DeletePod(pod.name, "parallelism lowered"))
    usable = isinstance(sizing, SizingDecision) and sizing.memory_bytes >= floor
    created: list[int] = []
    if claimable and usable:
        assert isinstance(sizing, SizingDecision)
        for index in range(parallelism):
            if index not in present:
                b.actions.append(CreateRunner(index, sizing))
                created.append(index)
    runner_counts(desired)
    if created:
        assert isinstance(sizing, SizingDecision)
        b.event(
            "Normal",
            "RunnersCreated",
            f"created runner(s) {', '.join(str(i) for i in created)} with "
            f"{sizing.resource}={sizing.quantity}",
        )

    # ---------------------------------------------------------------- Ready
    ready_count = b.status["runners"]["ready"]
    if isinstance(sizing, PeakPending):
        b.condition("Ready", False, "EstimatingMemory", sizing.reason)
    elif isinstance(sizing, PeakFailed):
        b.condition("Ready", False, "EstimateFailed", sizing.message)
        if b.entered("Ready", "EstimateFailed"):
            b.event("Warning", "EstimateFailed", sizing.message)
    elif isinstance(sizing, NoFit) or not usable:
        message = sizing.reason if isinstance(sizing, NoFit) else "no larger resource after OOM"
        b.condition("Ready", False, "NoFittingResource", message)
        if b.entered("Ready", "NoFittingResource"):
            b.event("Warning", "NoFittingResource", message)
    elif not claimable:
        b.condition(
            "Ready",
            False,
            "Finishing",
            f"every trial is claimed; waiting for {progress.active} running trial(s)",
        )
    elif ready_count >= desired and not created:
        b.condition("Ready", True, "RunnersReady", f"{ready_count}/{desired} runners ready")
    else:
        pending = next((p.unschedulable for p in alive if p.unschedulable), None)
        if pending:
            b.condition(
                "Ready", False, "Unschedulable", f"runner pods cannot be scheduled: {pending}"
            )
        else:
            b.condition("Ready", False, "RunnersStarting", f"{ready_count}/{desired} runners ready")
    return b.plan()


def _describe_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_param(v)}" for k, v in sorted(params.items())) or "no parameters"
