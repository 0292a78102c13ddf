"""What the decision needs to know of a study's child pods, read from the API's Pod objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpo_operator.manifests import runner_index

from trial_runner.contract import (
    COMPONENT_LABEL,
    ESTIMATE_KEY_ANNOTATION,
    KIND_ANNOTATION,
    KUEUE_ADMISSION_GATE,
    KUEUE_TERMINATION_CONDITION,
    MEMORY_ANNOTATION,
    RESOURCE_ANNOTATION,
    STUDY_LABEL,
    TRIALS_PER_DEVICE_ANNOTATION,
)

__all__ = ["ObservedPod", "observe_pod"]


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
    trials_per_device: int = 1
    waiting_for_admission: bool = False
    stopped_by_kueue: str | None = None


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
    stopped_by_kueue = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            unschedulable = str(cond.get("message") or cond.get("reason") or "unschedulable")
        if cond.get("type") == KUEUE_TERMINATION_CONDITION and cond.get("status") == "True":
            stopped_by_kueue = str(cond.get("reason") or "stopped")
    gates = {str(g.get("name")) for g in (pod.get("spec") or {}).get("schedulingGates") or []}
    processes = str(annotations.get(TRIALS_PER_DEVICE_ANNOTATION, ""))
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
        trials_per_device=int(processes) if processes.isdigit() else 1,
        waiting_for_admission=KUEUE_ADMISSION_GATE in gates,
        stopped_by_kueue=stopped_by_kueue,
    )
