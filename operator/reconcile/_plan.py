"""A plan (actions, the new status, events) and the builder the decision's steps fill in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from hpo_operator.reconcile._observe import ObservedPod
from hpo_operator.sizing import NoFit, PeakFailed, PeakPending, SizingDecision

from kubetune_api.contract import COMPONENT_ESTIMATE, COMPONENT_RUNNER
from kubetune_api.spec import StudySpec
from kubetune_api.status import (
    ConditionType,
    RunnerCounts,
    SizingStatus,
    StudyStatus,
    set_condition,
    timestamp,
)
from kubetune_study.pareto import ParetoPoint

__all__ = [
    "Action",
    "CreateEstimatePod",
    "CreateRunner",
    "DeletePod",
    "Event",
    "EventReason",
    "Plan",
    "PlanBuilder",
    "SizingInput",
    "WriteBest",
    "WriteFront",
]


#: What sizing gives the decision: a resource, or why there is none (yet).
SizingInput = SizingDecision | NoFit | PeakPending | PeakFailed


@dataclass(frozen=True)
class CreateRunner:
    """Create runner pod ``<study>-runner-<index>`` with the resource ``sizing`` chose."""

    index: int
    sizing: SizingDecision


@dataclass(frozen=True)
class CreateEstimatePod:
    """Create the estimate pod for the spec whose estimate key is ``key``."""

    key: str


@dataclass(frozen=True)
class DeletePod:
    """Delete pod ``name`` (``reason`` goes to the operator's log)."""

    name: str
    reason: str


@dataclass(frozen=True)
class WriteBest:
    """Write the best trial (its value, parameters and number) to ``<study>-best``."""

    value: float
    params: Mapping[str, Any]
    trial: int


@dataclass(frozen=True)
class WriteFront:
    """Write the Pareto front (every trial of it) to the ``<study>-best`` ConfigMap."""

    front: tuple[ParetoPoint, ...]


Action = CreateRunner | CreateEstimatePod | DeletePod | WriteBest | WriteFront


class EventReason(StrEnum):
    """Reasons of the events the decision posts that are no condition's reason (the others
    post the reason the condition takes: a :class:`~kubetune_api.status.ConditionReason` or a
    :class:`~kubetune_api.status.StartFailureReason`, or the condition's type when it flips)."""

    NEW_BEST_TRIAL = "NewBestTrial"
    PARETO_FRONT_CHANGED = "ParetoFrontChanged"
    STAGE_STARTED = "StageStarted"
    OOM_KILLED = "OOMKilled"
    RUNNER_FAILED = "RunnerFailed"
    TRIALS_PER_DEVICE_LOWERED = "TrialsPerDeviceLowered"
    SIZED = "Sized"
    RUNNERS_CREATED = "RunnersCreated"
    STUDY_DELETED = "StudyDeleted"
    STUDY_NOT_DELETED = "StudyNotDeleted"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to do: actions in order, then the status to write, then the events to post."""

    actions: tuple[Action, ...] = ()
    status: StudyStatus = field(default_factory=StudyStatus)
    events: tuple[Event, ...] = ()


class PlanBuilder:
    """One plan being decided: what was observed, and the actions, status and events so far.

    ``old`` is the status the study had; ``status`` the one being written (only the fields a
    step sets are written, see :meth:`StudyStatus.to_api`).
    """

    def __init__(
        self,
        spec: StudySpec,
        old: StudyStatus,
        generation: int,
        now: dt.datetime,
        children: Sequence[ObservedPod],
    ) -> None:
        self.spec = spec
        self.old = old
        self.generation = generation
        self.now = now
        self.status = StudyStatus(start_time=old.start_time or timestamp(now))
        self.conditions = list(old.conditions)
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.runners = sorted(
            (p for p in children if p.component == COMPONENT_RUNNER),
            key=lambda p: (p.index is None, p.index or 0, p.name),
        )
        self.estimates = [p for p in children if p.component == COMPONENT_ESTIMATE]
        same_spec = old.observed_generation == generation
        old_failures = old.runners.failed_pods if old.runners is not None else None
        #: Failed runner pods since the spec last changed (this pass's included).
        self.failures = (old_failures or 0) if same_spec else 0
        #: ``status.sizing`` as it was; an absent one reads as empty.
        self.old_sizing = old.sizing if old.sizing is not None else SizingStatus()
        #: Least memory a runner needs after OOMKilled ones (raised by this pass's).
        self.floor = self.old_sizing.floor_bytes or 0
        #: The most trials per device after pods whose processes kept running out of memory
        #: (lowered by this pass's); ``None`` while none did.
        self.trials_limit = self.old_sizing.trials_per_device_limit
        old_start = old.runners.start_failure if old.runners is not None else None
        #: Runner starts that failed in a row since the spec last changed (this pass's too).
        self.start_failure = old_start if same_spec else None
        #: Whether runners wait out a back-off after failed starts (none is created).
        self.backing_off = False

    @property
    def parallelism(self) -> int:
        """Trials that run at once (``spec.resources.parallelism``)."""
        return self.spec.resources.parallelism

    @property
    def runner_pods(self) -> int:
        """Runner pods as last decided (``status.sizing.pods``), else one per trial at once."""
        return self.old_sizing.pods or self.parallelism

    def floor_raised(self) -> bool:
        """Whether an OOMKilled runner raised the floor in this pass (the sizing this pass was
        given was chosen against the old one)."""
        return self.floor > (self.old_sizing.floor_bytes or 0)

    def trials_limit_lowered(self) -> bool:
        """Whether a pod whose processes kept running out of memory lowered trials per device
        in this pass (the sizing this pass was given was chosen against the old limit)."""
        old = self.old_sizing.trials_per_device_limit
        return self.trials_limit is not None and (old is None or self.trials_limit < old)

    def condition(self, type_: ConditionType, value: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions, type_, value, reason, message, self.generation, self.now
        )

    def _now(self, type_: ConditionType) -> tuple[str | None, str | None]:
        found = next((c for c in self.conditions if c.type == type_), None)
        return (found.status, found.reason) if found is not None else (None, None)

    def flipped_on(self, type_: ConditionType) -> bool:
        """Whether ``type_`` is True now and was not before this plan."""
        return self._now(type_)[0] == "True" and not self.old.is_true(type_)

    def entered(self, type_: ConditionType, reason: str) -> bool:
        """Whether ``type_`` now has ``reason`` and had another one before this plan."""
        return self._now(type_)[1] == reason and self.old.reason(type_) != reason

    def not_ready(
        self, reason: str, message: str, event: Literal["Normal", "Warning"] | None = None
    ) -> None:
        """``Ready=False`` with ``reason``; with ``event``, an event of that type when the
        condition enters the reason."""
        self.condition(ConditionType.READY, False, reason, message)
        if event is not None and self.entered(ConditionType.READY, reason):
            self.event(event, reason, message)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def delete(self, pods: Sequence[ObservedPod], reason: str) -> None:
        """Delete each of ``pods`` not already being deleted."""
        for pod in pods:
            if not pod.deleting:
                self.actions.append(DeletePod(pod.name, reason))

    def count_runners(self, desired: int) -> None:
        ready = sum(p.ready and not p.deleting for p in self.runners)
        self.status.runners = RunnerCounts(
            desired=desired,
            ready=ready,
            active=sum(not p.deleting and p.phase in ("Pending", "Running") for p in self.runners),
            failed_pods=self.failures,
            waiting_for_admission=sum(
                p.waiting_for_admission and not p.deleting for p in self.runners
            ),
            **({"start_failure": self.start_failure} if self.start_failure else {}),
        )
        self.status.runners_summary = f"{ready}/{desired}"

    def plan(self) -> Plan:
        self.status.conditions = self.conditions
        self.status.observed_generation = self.generation
        return Plan(tuple(self.actions), self.status, tuple(self.events))
