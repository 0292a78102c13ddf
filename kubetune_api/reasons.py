"""The HPOStudy status's vocabulary: condition types, the reasons of their transitions, and why a
runner pod could not start (typed, one place; :mod:`kubetune_api.status` re-exports them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CONDITION_TYPES",
    "START_FAILURE_REASONS",
    "ConditionReason",
    "ConditionType",
    "StartFailureReason",
]


class ConditionType(StrEnum):
    """The types of the study's conditions, in the order they are listed: ``Ready`` (runners up
    and claiming trials, else the reason says why not), ``Succeeded`` and ``Failed`` (for good),
    ``Suspended`` (``spec.suspend`` drained the runners), ``WarmStarted`` (what the warm start
    carried over)."""

    READY = "Ready"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    WARM_STARTED = "WarmStarted"


#: Condition types, in the order they are listed.
CONDITION_TYPES = tuple(ConditionType)


class ConditionReason(StrEnum):
    """The reasons of the study's conditions (a runner start failure's reason is a
    :class:`StartFailureReason`). Most are also the reason of the event posted when the
    condition takes them."""

    # Ready=False: why runners are not (all) ready.
    INVALID_SPEC = "InvalidSpec"
    #: The Optuna storage cannot be read: what runs is kept, nothing is created.
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    ESTIMATING_MEMORY = "EstimatingMemory"
    ESTIMATE_FAILED = "EstimateFailed"
    #: A runner ran out of memory: the next pass sizes against the raised floor.
    RESIZING = "Resizing"
    NO_FITTING_RESOURCE = "NoFittingResource"
    #: Every trial is claimed; the running ones are waited for.
    FINISHING = "Finishing"
    #: Kueue has not admitted every runner pod.
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    RUNNERS_STARTING = "RunnersStarting"
    # Ready=True.
    RUNNERS_READY = "RunnersReady"
    # Succeeded=False and Failed=False while the study runs.
    RUNNING = "Running"
    # Succeeded=True (Failed=False) and Failed=True (Succeeded=False): how the study ended.
    BUDGET_SPENT = "BudgetSpent"
    TIMED_OUT = "TimedOut"
    TOO_MANY_FAILED_TRIALS = "TooManyFailedTrials"
    CONSECUTIVE_FAILED_TRIALS = "ConsecutiveFailedTrials"
    #: Too many runner pods failed since the spec last changed.
    RUNNER_FAILURES = "RunnerFailures"
    # Ready=False of a finished, failed or suspended study.
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    # Suspended.
    RESUMED = "Resumed"
    NOT_SUSPENDED = "NotSuspended"
    FINISHED = "Finished"
    # WarmStarted=True.
    APPLIED = "Applied"
    PARTLY_APPLIED = "PartlyApplied"
    SOURCE_NOT_FOUND = "SourceNotFound"


class StartFailureReason(StrEnum):
    """Why runner pods cannot start: the ``Ready=False`` condition's reason, the reason of the
    Warning event, and (for every one but :attr:`UNSCHEDULABLE`) the ``Failed`` condition's
    reason once the same failure kept coming back (see ``hpo_operator.config.RunnerStartPolicy``).
    """

    #: The image cannot be pulled (``ErrImagePull``, ``ImagePullBackOff``, an invalid name, or
    #: not on the node with pull policy ``Never``).
    IMAGE_PULL_FAILED = "ImagePullFailed"
    #: A Secret or ConfigMap the pod reads, or a key of one, does not exist
    #: (``CreateContainerConfigError``).
    CONFIG_MISSING = "ConfigMissing"
    #: A volume cannot be mounted (the kubelet's ``FailedMount`` events) or a claim does not
    #: exist (the scheduler's ``PodScheduled`` condition).
    VOLUME_MOUNT_FAILED = "VolumeMountFailed"
    #: The container runtime cannot create or start the container (``CreateContainerError``,
    #: ``RunContainerError``).
    CONTAINER_START_FAILED = "ContainerStartFailed"
    #: The runner could not import the task or load its data (its exit code
    #: ``kubetune_api.contract.TASK_LOAD_EXIT_CODE`` and termination message).
    TASK_LOAD_FAILED = "TaskLoadFailed"
    #: The runner was given a GPU that CUDA cannot use (its exit code
    #: ``kubetune_api.contract.DEVICE_UNAVAILABLE_EXIT_CODE``; the termination message has the
    #: driver's and torch's CUDA versions).
    GPU_UNAVAILABLE = "GpuUnavailable"
    #: No node can take the pod now (the cluster may grow): shown, never counted as a failure.
    UNSCHEDULABLE = "Unschedulable"


#: The reasons that count as failed starts (a runner that cannot be scheduled may be waiting
#: for a node).
START_FAILURE_REASONS = frozenset(StartFailureReason) - {StartFailureReason.UNSCHEDULABLE}
