"""The HPOStudy status: a typed model of what the operator observes and writes.

:class:`StudyStatus` is what :func:`hpo_operator.reconcile.decide` returns, and the CRD's
status schema is generated from it (``kubetune_api.crd``), as the spec schema is generated from
``kubetune_api.spec.StudySpec``. Status is observation only and bounded in size: counts and the
best trial, never a list of every trial (Kubernetes API conventions). A study with several
objectives shows its Pareto front's size and at most :data:`FRONT_LIMIT` of its trials, the
same ones on every pass.

Only the fields a pass sets are written (:meth:`StudyStatus.to_api` leaves unset fields out),
so a pass that cannot read the storage keeps the trial counts it cannot see; a field set to
``None`` (``completionTime`` of a resumed study) is removed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune_api.reasons import (
    CONDITION_TYPES,
    START_FAILURE_REASONS,
    ConditionReason,
    ConditionType,
    StartFailureReason,
)

__all__ = [
    "CONDITION_TYPES",
    "FRONT_LIMIT",
    "MESSAGE_LIMIT",
    "START_FAILURE_REASONS",
    "BestTrial",
    "Condition",
    "ConditionReason",
    "ConditionType",
    "FrontTrial",
    "GpuPeakStatus",
    "ParetoFront",
    "RunnerCounts",
    "RunnerStartFailure",
    "SamplerStatus",
    "SizingStatus",
    "StageStatus",
    "StartFailureReason",
    "StudyStatus",
    "TelemetryStatus",
    "TrialCounts",
    "set_condition",
    "timestamp",
]


#: Trials of the Pareto front the status lists (the ConfigMap ``<study>-best`` has them all).
FRONT_LIMIT = 10
#: The longest condition message the CRD accepts.
MESSAGE_LIMIT = 4096

_DATE_TIME: dict[str, Any] = {"format": "date-time"}


class _Status(BaseModel):
    """Base: camelCase names; a status read back from the API may carry fields we dropped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _int(description: str) -> Any:
    return Field(default=None, description=description)


class Condition(_Status):
    type: str = Field(
        max_length=64, description="Ready, Succeeded, Failed, Suspended or WarmStarted."
    )
    status: Literal["True", "False", "Unknown"]
    reason: str | None = Field(
        default=None, max_length=64, description="CamelCase reason of the last transition."
    )
    message: str | None = Field(
        default=None, max_length=MESSAGE_LIMIT, description="Human-readable details."
    )
    last_transition_time: str | None = Field(
        default=None, description="When status last changed.", json_schema_extra=_DATE_TIME
    )
    observed_generation: int | None = _int("metadata.generation the condition was set for.")


class TrialCounts(_Status):
    """Trial counts by state."""

    complete: int | None = _int("Trials that finished with a value.")
    pruned: int | None = _int("Trials stopped early by the pruner.")
    failed: int | None = _int("Trials whose task failed.")
    preempted: int | None = _int(
        "Trials whose runner was stopped or died (pod deleted, node drained, preempted): "
        "re-queued to resume at their next fold; neither failures nor part of the budget."
    )
    running: int | None = _int("Trials running now.")
    waiting: int | None = _int("Trials queued: retries of preempted trials, warm-start points.")
    budget: int | None = _int("spec.budget.maxTrials as the runners see it.")
    infeasible: int | None = _int(
        "Complete trials outside spec.constraints (counted in complete too): never the best, "
        "never on the front."
    )


class SamplerStatus(_Status):
    """The sampler the study runs: spec.sampler.type, or what Auto chose."""

    type: str | None = Field(default=None, max_length=16, description="The sampler.")
    reason: str | None = Field(
        default=None, max_length=256, description="Why: set in the spec, or Auto's rule."
    )


class BestTrial(_Status):
    """The best complete trial so far."""

    value: str | None = Field(
        default=None, description="Objective value (as text: no floats in the API)."
    )
    trial: int | None = _int("Trial number.")
    params: dict[str, str] | None = Field(
        default=None, description="Parameters of the best trial, as text."
    )


class FrontTrial(_Status):
    """One trial of the Pareto front."""

    trial: int | None = _int("Trial number.")
    values: dict[str, str] | None = Field(
        default=None, description="Its value of each objective, by metric (as text)."
    )
    params: dict[str, str] | None = Field(default=None, description="Its parameters, as text.")


class ParetoFront(_Status):
    """The trials no other trial beats on every objective (studies with several objectives)."""

    size: int | None = _int("Trials on the front.")
    trials: list[FrontTrial] | None = Field(
        default=None,
        max_length=FRONT_LIMIT,
        description="At most 10 of them: best by the first objective first, evenly spaced "
        "along the front when it has more.",
    )
    digest: str | None = Field(
        default=None,
        max_length=64,
        description="Digest of the front's trial numbers; the <study>-best ConfigMap holds "
        "this front.",
    )


class StageStatus(_Status):
    current: int | None = _int("Current stage, from 1.")
    total: int | None = _int("Number of stages.")


class RunnerStartFailure(_Status):
    """Runner starts that failed in a row with the same reason (the last one's words)."""

    reason: str | None = Field(
        default=None, max_length=64, description="ImagePullFailed, ConfigMissing, ..."
    )
    message: str | None = Field(
        default=None,
        max_length=MESSAGE_LIMIT,
        description="The kubelet's, the scheduler's or the runner's own words.",
    )
    attempts: int | None = _int("Runner starts that failed in a row with this reason.")
    last_failure_time: str | None = Field(
        default=None,
        description="When the last failed start was counted.",
        json_schema_extra=_DATE_TIME,
    )
    retry_time: str | None = Field(
        default=None,
        description="No runner is created again before this time (exponential back-off).",
        json_schema_extra=_DATE_TIME,
    )


class RunnerCounts(_Status):
    desired: int | None = _int("Runner pods the study wants now.")
    ready: int | None = _int("Runner pods running and ready.")
    active: int | None = _int("Runner pods pending or running.")
    failed_pods: int | None = _int("Runner pods that failed since the spec changed.")
    waiting_for_admission: int | None = _int(
        "Runner pods Kueue has not admitted yet (spec.resources.queueName)."
    )
    start_failure: RunnerStartFailure | None = Field(
        default=None,
        description="Runners that failed to start in a row, until a trial runs or finishes.",
    )


class TelemetryStatus(_Status):
    """What the warm runners save, over the finished trials (``kubectl get -o wide``)."""

    overhead_seconds: str | None = Field(
        default=None,
        description="Mean seconds per finished trial that were not training or validation "
        "(as text: no floats in the API).",
    )
    trials_per_process: str | None = Field(
        default=None, description="Finished trials per runner process, e.g. 12.5."
    )
    processes: int | None = _int("Runner processes that finished trials.")


class GpuPeakStatus(_Status):
    """The estimate's peak for GPUs training at one precision."""

    precision: str = Field(max_length=8, description="BF16, FP16 or FP32.")
    full_batch_peak_bytes: int = Field(description="The batch unsplit.")
    micro_batch_peak_bytes: int = Field(description="Micro-batches of one sample.")


class SizingStatus(_Status):
    """How runner pods are sized, and why."""

    resource: str | None = Field(
        default=None, description="Resource each runner requests, e.g. nvidia.com/mig-2g.20gb."
    )
    quantity: str | None = Field(default=None, description="Quantity requested of the resource.")
    accelerator: Literal["MIG", "GPU", "CPU"] | None = None
    reason: str | None = Field(default=None, description="Why this resource (or why none fits).")
    peak_bytes: int | None = _int(
        "Peak training memory of the largest configuration (stated, or a CPU runner's)."
    )
    gpu_peaks: list[GpuPeakStatus] | None = Field(
        default=None,
        max_length=3,
        description="The estimate's peaks for GPUs, per precision: sizing uses the full batch "
        "at the precision each GPU trains at, micro-batches only when no GPU holds that.",
    )
    precision: str | None = Field(
        default=None, max_length=8, description="The precision the chosen GPUs were sized at."
    )
    required_bytes: int | None = _int("Peak plus headroom (and the floor after an OOM).")
    memory_bytes: int | None = _int("Memory of the chosen resource.")
    floor_bytes: int | None = _int("Least memory a runner needs after an OOMKilled one.")
    method: str | None = Field(
        default=None, description="Where peakBytes came from: Spec, FakeTensor, Analytic, ..."
    )
    estimate_key: str | None = Field(
        default=None, description="Digest of the spec the estimate was made for."
    )
    pods: int | None = _int("Runner pods that run spec.resources.parallelism trials at once.")
    trials_per_device: int | None = _int(
        "The most runner processes (trials) one runner pod runs on its device."
    )
    packing: str | None = Field(
        default=None,
        description="Estimated peak memory x trialsPerDevice / the device's memory, e.g. 84% "
        "(GPUs and MIG slices; as text: no floats in the API).",
    )
    trials_per_device_limit: int | None = _int(
        "The most trials per device after a runner pod's processes kept running out of memory."
    )


class StudyStatus(_Status):
    """Observed state of the study, written by the operator."""

    observed_generation: int | None = _int("metadata.generation the status describes.")
    study_name: str | None = Field(
        default=None, description="Name of the Optuna study in the storage."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    trials: TrialCounts | None = None
    trials_summary: str | None = Field(
        default=None, description="Finished trials of the budget, e.g. 12/50."
    )
    best: BestTrial | None = None
    pareto_front: ParetoFront | None = None
    sampler: SamplerStatus | None = None
    stage: StageStatus | None = None
    runners: RunnerCounts | None = None
    runners_summary: str | None = Field(
        default=None, description="Ready runners of the desired, e.g. 2/2."
    )
    sizing: SizingStatus | None = None
    telemetry: TelemetryStatus | None = None
    start_time: str | None = Field(
        default=None,
        description="When the operator started the study.",
        json_schema_extra=_DATE_TIME,
    )
    completion_time: str | None = Field(
        default=None,
        description="When the study finished.",
        json_schema_extra={**_DATE_TIME, "nullable": True},
    )

    @classmethod
    def from_api(cls, status: Mapping[str, Any] | None) -> StudyStatus:
        """The status as the API returns it (``{}`` or ``None`` for a new study)."""
        return cls.model_validate(dict(status or {}))

    def to_api(self) -> dict[str, Any]:
        """The JSON the operator writes: camelCase, the fields this pass set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: ConditionType) -> bool:
        found = self.condition(type_)
        return found is not None and found.status == "True"

    def reason(self, type_: ConditionType) -> str | None:
        found = self.condition(type_)
        return found.reason if found is not None else None


def timestamp(now: dt.datetime) -> str:
    """An RFC 3339 time in UTC, as Kubernetes writes them."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: ConditionType,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only when status flips."""
    value: Literal["True", "False"] = "True" if status else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    same = previous is not None and previous.status == value and previous.last_transition_time
    updated = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:MESSAGE_LIMIT],
        last_transition_time=previous.last_transition_time if same and previous else timestamp(now),
        observed_generation=generation,
    )
    out = [c for c in conditions if c.type != type_] + [updated]
    order: dict[str, int] = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.type, len(order)))
