"""The HPOStudy models: what a study file (or the API object's ``spec``) may hold.

Structure (types, enums, required fields, unknown fields) is checked by pydantic in strict
mode. Numbers that are not counts are strings (``"1e-4"``), following the Kubernetes API
convention of no floats in specs; each model parses its own once and exposes the value
(``Resources.headroom_fraction``, ``EarlyStopping.min_delta_value``, ...), so nothing
downstream parses them again. :meth:`Objective.better` is the one place that says which of
two scores is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune_api.contract import STORAGE_SECRET_KEY, ApiVersion
from kubetune_api.spec._parse import DURATION_PATTERN, parse_duration, parse_number, parse_quantity

__all__ = [
    "DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS",
    "FREE_FORM_FIELDS",
    "MAX_OBJECTIVES",
    "MAX_SEED",
    "MAX_STAGES",
    "MAX_STUDY_NAME",
    "MAX_TRIALS_PER_DEVICE",
    "MAX_WARM_START_POINTS",
    "MULTI_OBJECTIVE_SAMPLERS",
    "NAME_PATTERN",
    "NUMBER_PATTERN",
    "QUANTITY_PATTERN",
    "QUEUE_NAME_PATTERN",
    "SHARED_MEMORY_BASE",
    "SHARED_MEMORY_PER_WORKER",
    "STALL_TIMEOUT_PATTERN",
    "Budget",
    "Checkpoint",
    "EarlyStopping",
    "EpochScheduleEntry",
    "FromStudy",
    "HPOStudy",
    "ObjectMeta",
    "Objective",
    "Parameter",
    "ParameterValue",
    "Profile",
    "Pruner",
    "Resources",
    "Runner",
    "Sampler",
    "SecretKeyRef",
    "Stage",
    "Storage",
    "StudySpec",
    "TaskSpec",
    "Training",
    "WarmStart",
    "WarmStartPoint",
    "best_first",
    "best_first_key",
    "is_better",
]


NUMBER_PATTERN = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: ``budget.stallTimeout``: ``Auto`` or a duration.
STALL_TIMEOUT_PATTERN = r"^(Auto|([0-9]+h)?([0-9]+m)?([0-9]+s)?)$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
GROUP_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
# A Kueue LocalQueue: an object name (DNS-1123 subdomain) that is also a label value.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

# Study names become pod names "<name>-runner-<n>" and Optuna study names, so they must be
# DNS-1123 labels with room for the suffix.
MAX_STUDY_NAME = 48

# Bounds on lengths and counts also keep the CRD's CEL rules within the API server's cost budget.
Number = Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
IntOrNumber = int | Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
ChoiceValue = int | Annotated[str, Field(max_length=253)]


#: Samplers Optuna can run on a study with several objectives (CMA-ES cannot).
MULTI_OBJECTIVE_SAMPLERS = ("TPE", "NSGAII", "NSGAIII", "Random", "GP", "QMC")
#: Objectives a study may have (``spec.objectives``).
MAX_OBJECTIVES = 8
#: Warm-start points a study may list.
MAX_WARM_START_POINTS = 16
#: Stages a study may have.
MAX_STAGES = 16
#: The largest ``sampler.seed``: NumPy and scikit-learn take seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
#: Failed trials in a row after which a study fails (``budget.maxConsecutiveFailedTrials``):
#: a task that fails every trial stops after a handful, not after thousands.
DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS = 10
#: Fields whose content is free-form (paths below ``spec``): kept as written, nulls included.
FREE_FORM_FIELDS: tuple[tuple[str, ...], ...] = (("task", "config"),)
#: Runner processes one runner pod may run on its device (``resources.trialsPerDevice``).
MAX_TRIALS_PER_DEVICE = 16


def is_better(direction: str, a: float, b: float, margin: float = 0.0) -> bool:
    """Whether score ``a`` beats ``b`` by more than ``margin`` under ``direction``.

    Every comparison of scores (best trial, early stopping, best stage, checkpoints) goes
    through this function, usually as :meth:`Objective.better`.
    """
    return a > b + margin if direction == "Maximize" else a < b - margin


def best_first(direction: str, value: float) -> float:
    """A sort key that puts the best score under ``direction`` first."""
    return -value if direction == "Maximize" else value


def best_first_key(directions: Sequence[str], values: Sequence[float]) -> tuple[float, ...]:
    """A sort key over several objectives: the best by the first objective first, ties broken
    by the next ones (a lexicographic order, so the first is always Pareto-optimal)."""
    return tuple(best_first(d, v) for d, v in zip(directions, values, strict=True))


class _Model(BaseModel):
    """Base: camelCase field names, unknown fields rejected, no silent type coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class Objective(_Model):
    metric: str = Field(
        min_length=1, max_length=253, description="Name of the metric the task returns."
    )
    direction: Literal["Maximize", "Minimize"] = Field(
        default="Maximize", description="Whether larger or smaller metric values are better."
    )

    def better(self, a: float, b: float, margin: float = 0.0) -> bool:
        """Whether score ``a`` beats ``b`` by more than ``margin``."""
        return is_better(self.direction, a, b, margin)

    def best_first(self, value: float) -> float:
        """A sort key that puts the best score first."""
        return best_first(self.direction, value)


class TaskSpec(_Model):
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="module:attribute of the task class, importable inside the runner image.",
    )
    image: str | None = Field(
        default=None, description="Runner image for the cluster; unused by local runs."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Free-form settings passed to the task unchanged."
    )


class Parameter(_Model):
    name: str = Field(pattern=PARAM_NAME_PATTERN, max_length=63)
    type: Literal["Float", "Int", "Categorical"]
    low: IntOrNumber | None = Field(default=None, description="Lower bound (Float, Int).")
    high: IntOrNumber | None = Field(default=None, description="Upper bound (Float, Int).")
    step: IntOrNumber | None = Field(default=None, description="Discretisation step.")
    scale: Literal["Linear", "Log"] = Field(default="Linear")
    choices: list[ChoiceValue] | None = Field(
        default=None,
        max_length=256,
        description="Values of a Categorical parameter (integers or strings).",
    )
    group: str = Field(default="Default", pattern=GROUP_PATTERN, max_length=63)
    default: ChoiceValue | None = Field(
        default=None,
        description="Value used while the parameter's group is not searched: a number for "
        "Float and Int, one of the choices for Categorical.",
    )

    @cached_property
    def low_value(self) -> float | None:
        return _number_or_none(self.low)

    @cached_property
    def high_value(self) -> float | None:
        return _number_or_none(self.high)

    @cached_property
    def step_value(self) -> float | None:
        return _number_or_none(self.step)

    def typed(self, raw: int | str) -> int | float | str:
        """A bound, default or choice as this parameter's type (Int, Float, or as given)."""
        if self.type == "Int":
            return int(float(raw)) if isinstance(raw, str) else raw
        if self.type == "Float":
            return parse_number(raw)
        return raw


class Stage(_Model):
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    groups: list[Annotated[str, Field(pattern=GROUP_PATTERN, max_length=63)]] = Field(
        min_length=1, max_length=64
    )
    trials: int | None = Field(
        default=None, ge=1, description="Trials of this stage; the last stage may take the rest."
    )


class Budget(_Model):
    max_trials: int = Field(ge=1, le=100000, description="Finished trials the study runs.")
    max_failed_trials: int | None = Field(
        default=None, ge=0, description="Failed trials after which the study is Failed."
    )
    max_consecutive_failed_trials: int = Field(
        default=DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS,
        ge=1,
        le=100000,
        description="Trials failing in a row (none complete or pruned between them) after "
        "which the study is Failed.",
    )
    timeout: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        min_length=1,
        max_length=32,
        description="Wall-clock limit, e.g. 6h or 90m.",
    )

    trial_timeout: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        min_length=1,
        max_length=32,
        description="Wall-clock limit of one trial, e.g. 30m: a trial running longer ends "
        "Failed (TrialTimeout) and counts toward maxFailedTrials and the failure breaker.",
    )
    stall_timeout: str = Field(
        default="Auto",
        pattern=STALL_TIMEOUT_PATTERN,
        min_length=1,
        max_length=32,
        description="A trial in which no training or validation step finishes for this long "
        "ends Failed (Stalled). Auto: the larger of 5m and 10 times the slowest step its "
        "runner process has seen; before a trial's first step, the larger of 30m and 10 times "
        "the slowest first step. Or a duration such as 20m.",
    )

    @cached_property
    def timeout_seconds(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None

    @cached_property
    def trial_timeout_seconds(self) -> float | None:
        return parse_duration(self.trial_timeout) if self.trial_timeout else None

    @cached_property
    def stall_timeout_seconds(self) -> float | None:
        """``stallTimeout`` in seconds; ``None`` for ``Auto``."""
        return None if self.stall_timeout == "Auto" else parse_duration(self.stall_timeout)


class Sampler(_Model):
    type: Literal["TPE", "Random", "CMAES", "GP", "QMC", "NSGAII", "NSGAIII"] = "TPE"
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Seed of the sampler and the data splits."
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    population_size: int | None = Field(
        default=None,
        ge=2,
        le=10000,
        description="NSGAII and NSGAIII only: trials per generation (default 50).",
    )
    constant_liar: bool = Field(
        default=True, description="TPE only: treat running trials as bad to spread workers."
    )
    multivariate: bool = Field(default=True, description="TPE only.")


class Pruner(_Model):
    type: Literal["Nop", "Median", "Percentile", "Hyperband", "SuccessiveHalving", "Wilcoxon"] = (
        "Nop"
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    n_warmup_steps: int | None = Field(default=None, ge=0)
    percentile: Number | None = None
    min_resource: int | None = Field(default=None, ge=1)
    max_resource: int | None = Field(default=None, ge=1)
    reduction_factor: int | None = Field(default=None, ge=2)
    p_threshold: Number | None = None
    patience: int | None = Field(
        default=None, ge=0, description="Wrap the pruner in PatientPruner with this patience."
    )
    min_delta: Number | None = Field(default=None, description="PatientPruner min_delta.")

    @cached_property
    def percentile_value(self) -> float | None:
        return _number_or_none(self.percentile)

    @cached_property
    def p_threshold_value(self) -> float | None:
        return _number_or_none(self.p_threshold)

    @cached_property
    def min_delta_value(self) -> float | None:
        return _number_or_none(self.min_delta)


class EarlyStopping(_Model):
    patience: int = Field(ge=1)
    min_delta: Number = "0"

    @cached_property
    def min_delta_value(self) -> float:
        return parse_number(self.min_delta)


class EpochScheduleEntry(_Model):
    from_trial: int = Field(ge=0, description="First trial number this entry applies to.")
    epochs: int = Field(ge=1, le=100000)


class Checkpoint(_Model):
    directory: str = Field(min_length=1, description="Where the best trial's weights are kept.")


class Profile(_Model):
    """Which trials write a ``torch.profiler`` trace (Chrome/Perfetto JSON), and where."""

    trials: Literal["First", "EveryN"] = Field(
        default="First",
        description="First: the first trial of each runner process (where warm-up shows). "
        "EveryN: the trials whose number is a multiple of every.",
    )
    every: int | None = Field(
        default=None,
        ge=2,
        le=100000,
        description="EveryN only: profile trials 0, every, 2 x every, ... (at most "
        "maxTrials / every traces).",
    )
    directory: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Where traces are written. Default: profiles/ beside "
        "training.checkpoint.directory, else kubetune-profiles/<study> in the runner's "
        "temporary directory (/tmp in a pod).",
    )


class Training(_Model):
    epochs: int = Field(default=10, ge=1, le=100000)
    epoch_schedule: list[EpochScheduleEntry] | None = Field(
        default=None,
        max_length=64,
        description="Epochs by trial number; overrides epochs where it applies.",
    )
    folds: int = Field(default=1, ge=1, le=50, description="k-fold CV; 1 means a holdout split.")
    report_every: Literal["Fold", "Epoch"] = Field(
        default="Fold", description="Report intermediate values to the pruner per fold or epoch."
    )
    validation_every: int = Field(default=1, ge=1, description="Validate every N epochs.")
    early_stopping: EarlyStopping | None = None
    precision: Literal["Auto", "BF16", "FP16", "FP32"] = Field(
        default="Auto",
        description="Auto: BF16 autocast on GPUs that support it, FP32 on CPUs (where BF16 is "
        "usually slower without native support); BF16 forces autocast on CPU too.",
    )
    tf32: bool = True
    cudnn_benchmark: bool = True
    fused_optimizer: bool = True
    pin_memory: bool = True
    compile: bool = False
    effective_batch_size: int | None = Field(
        default=None, ge=1, description="Batch per optimizer step when not searched."
    )
    batch_size_parameter: str = Field(
        default="batch_size",
        pattern=PARAM_NAME_PATTERN,
        max_length=63,
        description="Search-space parameter holding the effective batch size, if present.",
    )
    max_micro_batch: int | None = Field(
        default=None, ge=1, description="Upper bound on the micro-batch (memory cap)."
    )
    data_loader_workers: int = Field(default=0, ge=0, le=64)
    checkpoint: Checkpoint | None = None
    profile: Profile | None = Field(
        default=None, description="Write torch.profiler traces of some trials."
    )


class Resources(_Model):
    accelerator: Literal["Auto", "GPU", "MIG", "CPU"] = "Auto"
    parallelism: int = Field(default=1, ge=1, le=1000)
    memory_headroom: Number = Field(default="0.1", description="Fraction added to the estimate.")
    peak_memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Peak training memory of the largest configuration; skips the estimate.",
    )
    cpu: str | None = Field(
        default=None,
        pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$",
        description="CPU request of each runner process (a pod asks trialsPerDevice times it).",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Memory of each runner process (a pod asks trialsPerDevice times it).",
    )
    trials_per_device: (
        Annotated[int, Field(ge=1, le=MAX_TRIALS_PER_DEVICE)]
        | Annotated[str, Field(pattern=r"^Auto$")]
    ) = Field(
        default="Auto",
        description="Runner processes each runner pod runs on its one device (a GPU, a MIG "
        "slice or a CPU runner's memory), each claiming trials: Auto (as many as the memory "
        "estimate lets share a GPU or MIG slice, at most 8; 1 on CPU) or a number.",
    )
    queue_name: str | None = Field(
        default=None,
        pattern=QUEUE_NAME_PATTERN,
        max_length=63,
        description="Kueue LocalQueue that admits the runner pods (their "
        "kueue.x-k8s.io/queue-name label); default: the HPOStudy's own label of that name.",
    )

    @cached_property
    def headroom_fraction(self) -> float:
        """``memoryHeadroom`` as a number (0.1 = 10% above the estimate)."""
        return parse_number(self.memory_headroom)

    @cached_property
    def peak_memory_bytes(self) -> int | None:
        return parse_quantity(self.peak_memory) if self.peak_memory else None

    @cached_property
    def memory_bytes(self) -> int | None:
        return parse_quantity(self.memory) if self.memory else None

    @property
    def trials_per_device_count(self) -> int | None:
        """``trialsPerDevice`` as a number, or ``None`` for ``Auto``."""
        return self.trials_per_device if isinstance(self.trials_per_device, int) else None


#: ``/dev/shm`` of a runner process without data-loader workers, and what each worker adds: room
#: for its prefetched batches (two by default) of several MiB each.
SHARED_MEMORY_BASE = 64 * 2**20
SHARED_MEMORY_PER_WORKER = 256 * 2**20


class Runner(_Model):
    """How runner pods (and the estimate pod) are made beyond what kubetune sizes."""

    template: dict[str, Any] | None = Field(
        default=None,
        description="A PodTemplateSpec merged into every runner pod and the estimate pod: "
        "labels and annotations; volumes, init containers, node selector, affinity, "
        "tolerations, topology spread, image pull secrets, service account, priority, runtime "
        "and scheduler; fsGroup and supplemental groups; and for the container named runner "
        "its env, envFrom, volume mounts and resources other than CPU, memory and GPUs. "
        "Applies on a cluster only.",
    )
    shared_memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="Size of the memory-backed /dev/shm of each runner process (counted in the "
        "pod's memory); default 64Mi plus 256Mi per training.dataLoaderWorkers.",
    )

    def shared_memory_bytes(self, data_loader_workers: int) -> int:
        """``/dev/shm`` of one runner process: ``sharedMemory``, else sized from its workers."""
        if self.shared_memory:
            return parse_quantity(self.shared_memory)
        return SHARED_MEMORY_BASE + SHARED_MEMORY_PER_WORKER * data_loader_workers


class SecretKeyRef(_Model):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    key: str = Field(default=STORAGE_SECRET_KEY, min_length=1)


class Storage(_Model):
    secret_ref: SecretKeyRef | None = None
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to the Optuna study when the HPOStudy goes."
    )


class ParameterValue(_Model):
    name: str = Field(pattern=PARAM_NAME_PATTERN, max_length=63)
    value: ChoiceValue = Field(
        description='A number for Float and Int (text such as "3e-3" for a Float), one of '
        "the choices for Categorical."
    )


class WarmStartPoint(_Model):
    params: list[ParameterValue] = Field(
        min_length=1,
        max_length=64,
        description="Values of searchSpace parameters; the sampler chooses the others.",
    )


class FromStudy(_Model):
    hpo_study: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=MAX_STUDY_NAME,
        description="An HPOStudy in the same namespace (locally: the study of that name).",
    )
    study_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="An Optuna study in the same storage, by its exact name.",
    )
    mode: Literal["AddTrials", "Reevaluate"] = Field(
        default="AddTrials",
        description="AddTrials: its complete trials inform the sampler (not counted in the "
        "budget); Reevaluate: its topK best trials are run again as the first trials.",
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="Reevaluate: how many of its best trials."
    )


class WarmStart(_Model):
    points: list[WarmStartPoint] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_WARM_START_POINTS,
        description="Parameter sets evaluated first, each exactly once.",
    )
    from_study: FromStudy | None = Field(
        default=None, description="Start from another study's finished trials."
    )


class StudySpec(_Model):
    objective: Objective | None = Field(
        default=None, description="The metric to optimise (or objectives, for several)."
    )
    objectives: list[Objective] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_OBJECTIVES,
        description="Several metrics to optimise at once (a Pareto front); instead of objective.",
    )
    task: TaskSpec
    search_space: list[Parameter] = Field(min_length=1, max_length=64)
    stages: list[Stage] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_STAGES,
        description="Progressive stages; omitted, the whole search space is one stage.",
    )
    budget: Budget
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    runner: Runner = Field(
        default_factory=Runner,
        description="The runner pods' own part: a pod template and /dev/shm.",
    )
    storage: Storage = Field(default_factory=Storage)
    warm_start: WarmStart | None = None
    suspend: bool = False

    @property
    def all_objectives(self) -> tuple[Objective, ...]:
        """``objectives``, or ``objective`` alone (a validated spec has one of them)."""
        if self.objectives:
            return tuple(self.objectives)
        assert self.objective is not None, "a validated spec has objective or objectives"
        return (self.objective,)

    @property
    def primary_objective(self) -> Objective:
        """The objective that scores a fold's epochs (early stopping, the epoch a fold keeps)
        and keeps the best checkpoint: ``objective``, or the first of ``objectives``."""
        return self.all_objectives[0]

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(o.direction for o in self.all_objectives)

    @property
    def multi_objective(self) -> bool:
        return bool(self.objectives)


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta a study file carries; the API server checks the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_STUDY_NAME)
    namespace: str | None = None


class HPOStudy(_Model):
    api_version: ApiVersion
    kind: Literal["HPOStudy"]
    metadata: ObjectMeta
    spec: StudySpec

    @property
    def name(self) -> str:
        return self.metadata.name


def _number_or_none(value: int | str | None) -> float | None:
    return None if value is None else parse_number(value)
