"""Names shared by the operator, the pods it creates and the runner: one place for each.

A rename here is a change of kubetune's contract with clusters that already run it: pods
created by an older operator, studies stored by an older runner. Everything else imports
these names; nothing spells them out again.

The operator's own settings (``KUBETUNE_RUNNER_IMAGE`` ...) are not part of this contract;
they are read and documented in :mod:`hpo_operator.config`.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict, get_args

__all__ = [
    "API_VERSION",
    "APP_NAME",
    "BUDGET_ATTR",
    "CACHE_HOME_ENV",
    "CLI",
    "COMPONENT_ESTIMATE",
    "COMPONENT_LABEL",
    "COMPONENT_RUNNER",
    "CPU_THREADS_ENV",
    "CUDA_CONTEXT_BYTES",
    "DEVICE_KIND_ENV",
    "DEVICE_SHARE_ENV",
    "DEVICE_UNAVAILABLE_EXIT_CODE",
    "ESTIMATE_COMMAND",
    "ESTIMATE_KEY_ANNOTATION",
    "FAILED_ATTR",
    "FINALIZER",
    "FOLDS_ATTR",
    "GROUP",
    "HEARTBEAT_GRACE_PERIOD_ENV",
    "HEARTBEAT_INTERVAL_ENV",
    "INDEX_LABEL",
    "INSTANCE_LABEL",
    "JSON_OPTION",
    "KIND",
    "KIND_ANNOTATION",
    "KUEUE_ADMISSION_GATE",
    "KUEUE_PRIORITY_CLASS_LABEL",
    "KUEUE_QUEUE_LABEL",
    "KUEUE_TERMINATION_CONDITION",
    "LOCAL_WORKERS_ENV",
    "LOG_LEVEL_ENV",
    "MANAGED_BY_LABEL",
    "MEMORY_ANNOTATION",
    "METRICS_PATH",
    "METRICS_PORT_ENV",
    "NAME_LABEL",
    "OPERATOR_NAME",
    "ORIGIN_ATTR",
    "OUT_OF_MEMORY_EXIT_CODE",
    "OWNED_ANNOTATIONS",
    "OWNED_ENV",
    "OWNED_LABELS",
    "OWNED_RESOURCES",
    "PLURAL",
    "POD_NAME_ENV",
    "PREEMPTED_ATTR",
    "PRIOR_ATTR",
    "PROCESSES_OPTION",
    "PROFILE_ATTR",
    "PROMETHEUS_ANNOTATIONS",
    "RESOURCE_ANNOTATION",
    "RUNNER_COMMAND",
    "RUNNER_CONTAINER",
    "SHM_PATH",
    "SHM_VOLUME",
    "STAGE_ATTR",
    "STALL_FLOOR_ENV",
    "STARTED_ATTR",
    "START_GATE_FD_ENV",
    "START_READY_FD_ENV",
    "STORAGE_ENV",
    "STORAGE_PATIENCE_ENV",
    "STORAGE_SECRET_KEY",
    "STUDY_ENV",
    "STUDY_KEY",
    "STUDY_LABEL",
    "STUDY_NAME_OPTION",
    "SUPERVISED_ENV",
    "TASK_LOAD_EXIT_CODE",
    "TELEMETRY_ATTR",
    "TERMINATION_LOG",
    "TERMINATION_MESSAGE_OPTION",
    "TMP_PATH",
    "TMP_VOLUME",
    "TRIALS_PER_DEVICE_ANNOTATION",
    "TRIAL_HUNG_EXIT_CODE",
    "TRIAL_LIMIT_GRACE_ENV",
    "UNBUFFERED_ENV",
    "VERSION",
    "WAIT_SECONDS_ENV",
    "WARM_START_ATTR",
    "WORKER_ATTR",
    "ApiVersion",
    "TrialLimitReason",
    "TrialTelemetry",
]

# --- the resource

#: The HPOStudy resource's apiVersion (the type the spec model's ``apiVersion`` field takes), its
#: API group and its version.
ApiVersion = Literal["kubetune.dev/v1alpha1"]
API_VERSION: Final[str] = get_args(ApiVersion)[0]
GROUP, VERSION = API_VERSION.split("/")
KIND = "HPOStudy"
PLURAL = "hpostudies"
#: The finalizer the operator puts on each study, so that deleting one waits for its clean-up.
FINALIZER = f"{GROUP}/finalizer"
#: The key of a storage Secret that holds the storage URL, unless ``storage.secretRef.key`` says
#: another (and of the Secret the operator writes for a bundled storage).
STORAGE_SECRET_KEY = "url"

# --- environment variables of runner and estimate containers (and of `kubetune run` workers)

#: The HPOStudy document (YAML) a runner or estimate pod reads when given no file.
STUDY_ENV = "KUBETUNE_STUDY"
#: The Optuna storage URL; pods get it from a Secret, never in their spec.
STORAGE_ENV = "KUBETUNE_STORAGE_URL"
#: The pod's own name (downward API), for logs.
POD_NAME_ENV = "KUBETUNE_POD_NAME"
#: The kind of device the operator sized a runner pod for (``GPU``, ``MIG`` or ``CPU``): a runner
#: given a GPU that CUDA cannot use stops with :data:`DEVICE_UNAVAILABLE_EXIT_CODE` instead of
#: training on the CPU.
DEVICE_KIND_ENV = "KUBETUNE_DEVICE_KIND"
#: How many runner processes share this process's GPU (set by the supervisor of a pod's or a
#: laptop's processes): each plans for and is held to its share of the device.
DEVICE_SHARE_ENV = "KUBETUNE_DEVICE_SHARE"
#: Device memory a CUDA process takes besides its tensors (context, cuBLAS and cuDNN
#: workspaces): the operator counts it for every process it puts on a GPU, and a runner
#: process sharing a GPU leaves it out of its share.
CUDA_CONTEXT_BYTES = 512 * 2**20
#: Seconds between Optuna heartbeats of a running trial (default 10).
HEARTBEAT_INTERVAL_ENV = "KUBETUNE_HEARTBEAT_INTERVAL"
#: Seconds without a heartbeat after which a trial is stale (default 3x the interval).
HEARTBEAT_GRACE_PERIOD_ENV = "KUBETUNE_HEARTBEAT_GRACE_PERIOD"
#: Intra-op threads of a runner process (default: usable CPUs / local workers).
CPU_THREADS_ENV = "KUBETUNE_CPU_THREADS"
#: Runner processes `kubetune run` starts on this machine (they share its CPUs).
LOCAL_WORKERS_ENV = "KUBETUNE_LOCAL_WORKERS"
#: A pipe `kubetune run` passes to the runner processes it starts before the study is set up:
#: each loads its task, then reads one byte from it before its first claim (end of file: the
#: set-up failed, and the runner exits).
START_GATE_FD_ENV = "KUBETUNE_START_GATE_FD"
#: A pipe to which a gated runner writes one byte once its task is loaded, just before it
#: waits at the gate: the gate opens when every runner has written or exited, so that all start
#: claiming together (none spends the budget while another still loads).
START_READY_FD_ENV = "KUBETUNE_START_READY_FD"
#: Seconds a runner waits before asking again when it may not claim a trial yet.
WAIT_SECONDS_ENV = "KUBETUNE_WAIT_SECONDS"
#: Log level of the ``kubetune`` command (default INFO).
LOG_LEVEL_ENV = "KUBETUNE_LOG_LEVEL"
#: Seconds a runner keeps retrying an unreachable storage before it gives up (default 300);
#: its trial is kept meanwhile.
STORAGE_PATIENCE_ENV = "KUBETUNE_STORAGE_PATIENCE"
#: Port on which a runner serves its Prometheus metrics (unset: none are served).
METRICS_PORT_ENV = "KUBETUNE_METRICS_PORT"
#: Seconds of the floor of the Auto stall limit (``budget.stallTimeout: Auto``, default 300);
#: before a trial's first step the floor is 6 times it.
STALL_FLOOR_ENV = "KUBETUNE_STALL_FLOOR"
#: Seconds a trial past its time or stall limit has to stop at its next step (default 30)
#: before its runner fails it from outside and replaces its own process.
TRIAL_LIMIT_GRACE_ENV = "KUBETUNE_TRIAL_LIMIT_GRACE"
#: Set (to 1) by the supervisor of runner processes (``kubetune run``, ``kubetune runner
#: --processes N``) in their environment: a process whose trial is stuck exits with
#: :data:`TRIAL_HUNG_EXIT_CODE` for it to start another; without it, the process re-executes
#: itself in place.
SUPERVISED_ENV = "KUBETUNE_SUPERVISED"

#: Where caches go (torch, inductor, matplotlib): the pods set it to the writable ``/tmp``.
CACHE_HOME_ENV = "XDG_CACHE_HOME"
#: Set in the pods so that their output reaches the logs at once.
UNBUFFERED_ENV = "PYTHONUNBUFFERED"

# --- the command lines of the pods (the ``kubetune`` CLI parses them)

#: The command of the image.
CLI = "kubetune"
#: A runner pod runs ``kubetune runner --study-name NAME --termination-message-path PATH
#: [--processes N]`` and reads the study from :data:`STUDY_ENV`.
RUNNER_COMMAND = (CLI, "runner")
#: The estimate pod runs ``kubetune estimate --json --termination-message-path PATH``.
ESTIMATE_COMMAND = (CLI, "estimate")
#: The Optuna study a runner claims trials of.
STUDY_NAME_OPTION = "--study-name"
#: Where a runner writes why it stopped, and the estimate its JSON result.
TERMINATION_MESSAGE_OPTION = "--termination-message-path"
#: Runner processes a runner pod runs on its device.
PROCESSES_OPTION = "--processes"
#: The estimate prints JSON.
JSON_OPTION = "--json"

# --- the parts of a runner pod kubetune owns (``spec.runner.template`` may not set them)

#: The runner container's name; ``spec.runner.template`` may hold this one container only.
RUNNER_CONTAINER = "runner"
#: Volumes kubetune adds to runner and estimate pods: a writable ``/tmp`` for caches (the root
#: filesystem is read-only) and a memory-backed ``/dev/shm`` for data-loader workers.
TMP_VOLUME, TMP_PATH = "tmp", "/tmp"
SHM_VOLUME, SHM_PATH = "dshm", "/dev/shm"
#: Environment variables kubetune sets in runner and estimate containers.
OWNED_ENV = (
    STUDY_ENV,
    STORAGE_ENV,
    POD_NAME_ENV,
    DEVICE_KIND_ENV,
    DEVICE_SHARE_ENV,
    METRICS_PORT_ENV,
    START_GATE_FD_ENV,
    START_READY_FD_ENV,
    CACHE_HOME_ENV,
    UNBUFFERED_ENV,
)
#: Resources kubetune sizes (a prefix ends with "/"): the template may ask for others
#: (``ephemeral-storage``, hugepages, a NIC's extended resource).
OWNED_RESOURCES = ("cpu", "memory", "nvidia.com/")

# --- what the operator puts on the objects it creates, and reads back

#: Label with the HPOStudy's name on every child; the operator lists its pods by it.
STUDY_LABEL = "kubetune.dev/study"
#: Label with a runner pod's index (``<study>-runner-<index>``).
INDEX_LABEL = "kubetune.dev/runner-index"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: The value of :data:`NAME_LABEL`.
APP_NAME = "kubetune"
#: The value of :data:`MANAGED_BY_LABEL`, and the component of the operator's events.
OPERATOR_NAME = "kubetune-operator"
#: Values of :data:`COMPONENT_LABEL`.
COMPONENT_RUNNER = "trial-runner"
COMPONENT_ESTIMATE = "memory-estimate"
#: Annotations of a runner pod: the resource it requests, its memory and its kind, so a pod
#: that was OOMKilled tells the operator what was too small.
RESOURCE_ANNOTATION = "kubetune.dev/resource"
MEMORY_ANNOTATION = "kubetune.dev/memory-bytes"
KIND_ANNOTATION = "kubetune.dev/sizing-kind"
#: Annotation of a runner pod: the runner processes it runs on its device, so a pod whose
#: processes kept running out of memory tells the operator how many shared it.
TRIALS_PER_DEVICE_ANNOTATION = "kubetune.dev/trials-per-device"
#: Exit code of a runner pod (``kubetune runner --processes N``) whose processes kept running
#: out of memory on their shared device; the operator then lowers trials per device.
OUT_OF_MEMORY_EXIT_CODE = 4
#: Exit code of a runner process whose trial was stuck in a call that never returned: the trial
#: is already failed (:data:`FAILED_ATTR`), and its supervisor starts a new process in its place.
TRIAL_HUNG_EXIT_CODE = 5
#: Exit code of a runner whose task could not be imported or could not load its data; its
#: termination message (:data:`TERMINATION_LOG`) says why in one line. The operator shows it as
#: the study's ``TaskLoadFailed`` reason.
TASK_LOAD_EXIT_CODE = 6
#: Exit code of a runner that was given a GPU (``spec.resources.accelerator: GPU`` or ``MIG``,
#: or :data:`DEVICE_KIND_ENV` from the operator's sizing) that CUDA cannot use, e.g. a driver
#: older than the image's CUDA needs; its termination message has the driver's and torch's CUDA
#: versions. The operator shows it as the study's ``GpuUnavailable`` reason.
DEVICE_UNAVAILABLE_EXIT_CODE = 7
#: Annotation of an estimate pod: the digest of the spec it estimates.
ESTIMATE_KEY_ANNOTATION = "kubetune.dev/estimate-key"
#: Key of the study document in the ``<study>-spec`` ConfigMap.
STUDY_KEY = "study.yaml"
#: Where the estimate pod writes its JSON result, and a runner why it stopped, for the operator
#: to read.
TERMINATION_LOG = "/dev/termination-log"
#: The HTTP path of every kubetune metrics endpoint (operator and runners).
METRICS_PATH = "/metrics"
#: Annotations of pods with a metrics port, read by Prometheus' annotation-based discovery;
#: ``{port}`` is filled in.
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "{port}",
    "prometheus.io/path": METRICS_PATH,
}

#: Label and annotation keys kubetune sets (a prefix ends with "/"): ``spec.runner.template``
#: may not set them.
OWNED_LABELS = (
    "kubetune.dev/",
    NAME_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    COMPONENT_LABEL,
    "kueue.x-k8s.io/",
)
OWNED_ANNOTATIONS = ("kubetune.dev/", "prometheus.io/")

# --- Kueue's names (sigs.k8s.io/kueue v0.17: pkg/controller/constants, jobs/pod), which the
# operator writes on runner pods (its pod integration admits them) and reads back

#: Label naming the LocalQueue that admits a pod.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Label naming the WorkloadPriorityClass of a pod's workload (copied from the HPOStudy).
KUEUE_PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
#: Scheduling gate Kueue keeps on a pod until its workload is admitted.
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"
#: Pod condition Kueue sets on a pod it stops (its workload was evicted or preempted).
KUEUE_TERMINATION_CONDITION = "TerminationTarget"

# --- Optuna user attributes (in the shared storage)

#: Study: the live budget (JSON), written by whoever creates the study.
BUDGET_ATTR = "kubetune.budget"
#: Study: when the study started (ISO 8601), for ``budget.timeout``.
STARTED_ATTR = "kubetune.startedAt"
#: Trial: the index of the stage it belongs to.
STAGE_ATTR = "kubetune.stage"
#: Trial: the process that runs it (``host:pid``).
WORKER_ATTR = "kubetune.worker"
#: Trial: the engine's telemetry and the task's metrics (JSON, a :class:`TrialTelemetry`).
TELEMETRY_ATTR = "kubetune.telemetry"
#: Study: the warm start applied to it (digest and report, JSON), so it is applied once.
WARM_START_ATTR = "kubetune.warmStart"
#: Trial: a complete trial copied from another study by a warm start (``"<study>#<number>"``);
#: samplers learn from it, the budget, stages and best leave it out.
PRIOR_ATTR = "kubetune.prior"
#: Trial: why a warm start queued it (``"point <i>"`` or ``"<study>#<number>"``).
ORIGIN_ATTR = "kubetune.origin"
#: Trial: why its runner stopped before it finished (``Terminated``: SIGTERM; ``HeartbeatLost``:
#: its runner stopped sending heartbeats; ``RunnerExited``: a local runner process died). Set
#: just before the trial is failed; it is then counted as preempted, not failed, and its retry
#: (which does not carry this attribute) resumes it.
PREEMPTED_ATTR = "kubetune.preempted"
#: Trial: the folds it finished (JSON list: fold, score, metrics, epochs, the intermediate values
#: reported during the fold), written as each fold finishes. A retry carries them, skips those
#: folds and reports their values again, so a preemption loses at most the fold in progress.
FOLDS_ATTR = "kubetune.folds"
#: Trial: the path of its ``torch.profiler`` trace (``spec.training.profile``).
PROFILE_ATTR = "kubetune.profile"
#: Trial: why kubetune failed it (a :data:`TrialLimitReason`: ``TrialTimeout``, it ran longer
#: than ``budget.trialTimeout``; ``Stalled``, no step finished within ``budget.stallTimeout``).
#: A failure like the task's own: it counts toward ``maxFailedTrials`` and the failure breaker.
FAILED_ATTR = "kubetune.failed"

TrialLimitReason = Literal["TrialTimeout", "Stalled"]


class TrialTelemetry(TypedDict, total=False):
    """What :data:`TELEMETRY_ATTR` holds: one trial's telemetry, as the engine records it.

    Readers (``kubetune results``, the report, the runner's metrics, the status columns) read
    these keys and no others; a trial stored by an older runner may lack any of them.
    """

    wall_seconds: float
    step_seconds: float  # forward, backward and optimizer steps
    data_wait_seconds: float
    eval_seconds: float
    overhead_seconds: float  # wall time that is neither training nor validation compute
    epochs_run: int
    epochs_budget: int
    folds_run: int
    folds: int
    folds_resumed: int  # carried over from a preempted run of the trial, not trained again
    epochs_resumed: int
    stop_reason: Literal["Completed", "EarlyStopped", "Pruned", "OutOfMemory"]
    effective_batch: int
    micro_batch: int
    accumulation_steps: int
    validation_batch: int
    oom_retries: int
    precision: str
    tf32: bool
    cudnn_benchmark: bool
    fused_optimizer: bool
    pin_memory: bool
    #: The trial ran compiled (``training.compile``) with no frame left to eager: false once
    #: Dynamo gave up recompiling (``recompile_limit``) and ran the model uncompiled.
    compile: bool
    #: Graphs Dynamo compiled during this trial (a new width or mode recompiles).
    compile_graphs: int
    device: str
    data_on_device: bool
    estimated_peak_bytes: int | None
    peak_memory_bytes: int
    trial_in_process: int  # 1 for the first trial of its runner process, 2 for the next ...
    gpu_utilization_mean: float | None  # percent, NVML samples during the trial
    gpu_memory_used_max: int | None  # bytes, NVML
    metrics: dict[str, float]  # the task's metrics, averaged over folds
