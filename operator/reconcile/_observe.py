"""What the decision needs to know of a study's child pods, read from the API's Pod objects.

A pod that cannot start says why in different places: the container's waiting state (image
pull, a missing Secret, ConfigMap or key), the ``PodScheduled`` condition (no node, a missing
claim), the kubelet's ``FailedMount`` events (a volume that cannot be mounted: the pod only
shows ``ContainerCreating``) and, once it ran, the runner's exit code and termination message
(a task that does not load). :func:`observe_pod` reads the pod, :func:`with_mount_failure` adds
what its events say; either gives a :class:`StartFailure`, its words bounded and without
credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hpo_operator.names import runner_index

from kubetune_api.contract import (
    COMPONENT_LABEL,
    DEVICE_UNAVAILABLE_EXIT_CODE,
    ESTIMATE_KEY_ANNOTATION,
    KIND_ANNOTATION,
    KUEUE_ADMISSION_GATE,
    KUEUE_TERMINATION_CONDITION,
    MEMORY_ANNOTATION,
    RESOURCE_ANNOTATION,
    STUDY_LABEL,
    TASK_LOAD_EXIT_CODE,
    TRIALS_PER_DEVICE_ANNOTATION,
)
from kubetune_api.status import StartFailureReason
from kubetune_study.storage import redact

__all__ = [
    "START_MESSAGE_LIMIT",
    "ObservedPod",
    "StartFailure",
    "last_line",
    "observe_pod",
    "with_mount_failure",
]

#: The longest words of the kubelet, the scheduler or a runner kept for one pod.
START_MESSAGE_LIMIT = 500

#: Container waiting reasons (kubelet ``images`` and ``kuberuntime`` packages) and why they
#: keep a runner from starting. ``ContainerCreating`` and ``PodInitializing`` are not failures.
WAITING_REASONS: Mapping[str, StartFailureReason] = {
    "ErrImagePull": StartFailureReason.IMAGE_PULL_FAILED,
    "ImagePullBackOff": StartFailureReason.IMAGE_PULL_FAILED,
    "InvalidImageName": StartFailureReason.IMAGE_PULL_FAILED,
    "ErrImageNeverPull": StartFailureReason.IMAGE_PULL_FAILED,
    "ErrImageInspect": StartFailureReason.IMAGE_PULL_FAILED,
    "RegistryUnavailable": StartFailureReason.IMAGE_PULL_FAILED,
    "SignatureValidationFailed": StartFailureReason.IMAGE_PULL_FAILED,
    "CreateContainerConfigError": StartFailureReason.CONFIG_MISSING,
    "CreateContainerError": StartFailureReason.CONTAINER_START_FAILED,
    "RunContainerError": StartFailureReason.CONTAINER_START_FAILED,
    "PreStartHookError": StartFailureReason.CONTAINER_START_FAILED,
}
#: The scheduler's words for a pod whose claim does not exist.
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "[^"]*" not found', re.IGNORECASE)


@dataclass(frozen=True)
class StartFailure:
    """Why a pod cannot start, in its reason's words (bounded, credentials redacted)."""

    reason: StartFailureReason
    message: str


def last_line(text: str, limit: int = START_MESSAGE_LIMIT) -> str:
    """The last non-empty line of ``text`` (a termination message, or the log tail the
    kubelet keeps instead), without credentials, at most ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1])[:limit] if lines else ""


def _bounded(text: str) -> str:
    return redact(" ".join(text.split()))[:START_MESSAGE_LIMIT]


@dataclass(frozen=True)
class ObservedPod:
    """What the decision needs to know of one child pod."""

    name: str
    component: str
    uid: str = ""
    created: dt.datetime | None = None
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
    trials_per_device: int = 1
    waiting_for_admission: bool = False
    stopped_by_kueue: str | None = None
    start_failure: StartFailure | None = None

    @property
    def started(self) -> bool:
        """Whether its containers got past starting (running, ready or ended)."""
        return self.ready or self.phase != "Pending"

    def age(self, now: dt.datetime) -> float:
        """Seconds since it was created (0 for one the API has not shown yet)."""
        return (now - self.created).total_seconds() if self.created is not None else 0.0


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
    failure = _waiting_failure([*(status.get("initContainerStatuses") or []), *container_statuses])
    unschedulable = None
    stopped_by_kueue = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            unschedulable = str(cond.get("message") or cond.get("reason") or "unschedulable")
            if _MISSING_CLAIM.search(unschedulable):
                failure = StartFailure(
                    StartFailureReason.VOLUME_MOUNT_FAILED, _bounded(unschedulable)
                )
                unschedulable = None
        if cond.get("type") == KUEUE_TERMINATION_CONDITION and cond.get("status") == "True":
            stopped_by_kueue = str(cond.get("reason") or "stopped")
    gates = {str(g.get("name")) for g in (pod.get("spec") or {}).get("schedulingGates") or []}
    processes = str(annotations.get(TRIALS_PER_DEVICE_ANNOTATION, ""))
    memory = annotations.get(MEMORY_ANNOTATION)
    exit_code = terminated.get("exitCode")
    message = str(terminated.get("message") or "").strip()
    exited = {
        TASK_LOAD_EXIT_CODE: StartFailureReason.TASK_LOAD_FAILED,
        DEVICE_UNAVAILABLE_EXIT_CODE: StartFailureReason.GPU_UNAVAILABLE,
    }
    if exit_code in exited:
        failure = StartFailure(exited[exit_code], last_line(message))
    oom = terminated.get("reason") == "OOMKilled" or status.get("reason") == "OOMKilled"
    return ObservedPod(
        name=name,
        component=str(labels.get(COMPONENT_LABEL, "")),
        uid=str(meta.get("uid") or ""),
        created=_time(meta.get("creationTimestamp")),
        index=runner_index(str(labels.get(STUDY_LABEL, "")), name),
        phase=str(status.get("phase") or "Pending"),
        ready=ready and status.get("phase") == "Running",
        deleting=bool(meta.get("deletionTimestamp")),
        kind=annotations.get(KIND_ANNOTATION),
        resource=annotations.get(RESOURCE_ANNOTATION),
        memory_bytes=int(memory) if memory and str(memory).isdigit() else None,
        oom_killed=oom,
        exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        message=message,
        unschedulable=unschedulable,
        estimate_key=annotations.get(ESTIMATE_KEY_ANNOTATION),
        trials_per_device=int(processes) if processes.isdigit() else 1,
        waiting_for_admission=KUEUE_ADMISSION_GATE in gates,
        stopped_by_kueue=stopped_by_kueue,
        start_failure=failure,
    )


def with_mount_failure(pod: ObservedPod, events: Iterable[tuple[str, str]]) -> ObservedPod:
    """``pod`` with what the kubelet's ``FailedMount`` events about it say, as
    ``(time, message)`` pairs: the latest is its start failure while it has not started and
    shows no other (the events outlive a mount that succeeded later)."""
    latest = max(events, default=None)
    if latest is None or pod.started or pod.start_failure is not None or pod.unschedulable:
        return pod
    failure = StartFailure(StartFailureReason.VOLUME_MOUNT_FAILED, _bounded(latest[1]))
    return dataclasses.replace(pod, start_failure=failure)


def _waiting_failure(statuses: Iterable[Mapping[str, Any]]) -> StartFailure | None:
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = WAITING_REASONS.get(str(waiting.get("reason") or ""))
        if reason is not None:
            text = str(waiting.get("message") or waiting.get("reason"))
            return StartFailure(reason, _bounded(f"{cs.get('name', 'container')}: {text}"))
    return None


def _time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
