"""The runner and estimate pods of a study (pure: dicts in, dicts out).

Every child has a deterministic name derived from the study, so "already exists" means
"already done" after an operator restart, and an owner reference to the study, so the garbage
collector removes what the finalizer misses.

Runner pods follow the ``restricted`` Pod Security Standard: non-root numeric user, no
privilege escalation, all capabilities dropped, ``RuntimeDefault`` seccomp and a read-only root
filesystem with an ``emptyDir`` on ``/tmp`` for caches, and a memory-backed ``/dev/shm`` for
data-loader workers, sized from ``training.dataLoaderWorkers`` (or ``spec.runner.sharedMemory``)
and counted in the pod's memory. The study's ``spec.runner.template`` (volumes, env, envFrom,
scheduling constraints, service account ...) is merged into runner and estimate pods; it adds
to kubetune's part and never replaces it. The storage URL reaches the container
only through a ``secretKeyRef``; the study document through a ``configMapKeyRef`` (the runner
reads ``KUBETUNE_STUDY``, the same way ``kubetune runner`` reads it on a laptop).

A runner pod runs its share of the study's ``parallelism`` runner processes on its one device
(``kubetune runner --processes N``, at most ``trialsPerDevice``) and asks for CPU and memory for
each of them. With
``spec.resources.queueName`` (or the HPOStudy's own ``kueue.x-k8s.io/queue-name`` label, or
the operator's ``KUBETUNE_RUNNER_QUEUE_NAME``) it carries the labels of Kueue's pod
integration, and Kueue admits each runner pod on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from hpo_operator.config import OperatorConfig
from hpo_operator.manifests import child_metadata, without_nulls
from hpo_operator.names import (
    estimate_pod_name,
    optuna_study_name,
    runner_pod_name,
    spec_configmap_name,
)
from hpo_operator.sizing import GPU, SizingDecision, format_bytes

from kubetune_api.contract import (
    CACHE_HOME_ENV,
    COMPONENT_ESTIMATE,
    COMPONENT_RUNNER,
    DEVICE_KIND_ENV,
    ESTIMATE_COMMAND,
    ESTIMATE_KEY_ANNOTATION,
    INDEX_LABEL,
    JSON_OPTION,
    KIND_ANNOTATION,
    KUEUE_PRIORITY_CLASS_LABEL,
    KUEUE_QUEUE_LABEL,
    MEMORY_ANNOTATION,
    METRICS_PORT_ENV,
    POD_NAME_ENV,
    PROCESSES_OPTION,
    PROMETHEUS_ANNOTATIONS,
    RESOURCE_ANNOTATION,
    RUNNER_COMMAND,
    RUNNER_CONTAINER,
    SHM_PATH,
    SHM_VOLUME,
    STORAGE_ENV,
    STUDY_ENV,
    STUDY_KEY,
    STUDY_NAME_OPTION,
    TERMINATION_LOG,
    TERMINATION_MESSAGE_OPTION,
    TMP_PATH,
    TMP_VOLUME,
    TRIALS_PER_DEVICE_ANNOTATION,
    UNBUFFERED_ENV,
)
from kubetune_api.spec import StudySpec, parse_quantity

__all__ = ["estimate_pod", "runner_pod"]


def _pod_security(config: OperatorConfig) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_user,
        "fsGroup": config.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _env(owner: Mapping[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    study = owner["metadata"]["name"]
    env: list[dict[str, Any]] = [
        {
            "name": STUDY_ENV,
            "valueFrom": {
                "configMapKeyRef": {"name": spec_configmap_name(study), "key": STUDY_KEY}
            },
        },
        # Caches (torch, inductor, matplotlib) go to the writable /tmp volume.
        {"name": CACHE_HOME_ENV, "value": f"{TMP_PATH}/.cache"},
        {"name": UNBUFFERED_ENV, "value": "1"},
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    env.extend({"name": k, "value": v} for k, v in sorted(config.extra_env.items()))
    return env


def _resources(spec: StudySpec, sizing: SizingDecision) -> dict[str, Any]:
    """Requests and limits of a runner pod: the device once, CPU, memory and ``/dev/shm`` per
    process (the memory-backed ``/dev/shm`` is charged to the pod's memory)."""
    processes = sizing.trials_per_device
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.resources.cpu:
        requests["cpu"] = _cpu_times(spec.resources.cpu, processes)
    memory = spec.resources.memory_bytes
    if sizing.kind == "CPU":
        memory = parse_quantity(sizing.quantity)
    else:
        # Extended resources are requested through limits (requests default to them).
        limits[sizing.resource] = sizing.quantity
    if memory is not None:
        total = (memory + _shared_memory_bytes(spec)) * processes
        requests["memory"] = limits["memory"] = format_bytes(total)
    out: dict[str, Any] = {"limits": limits}
    if requests:
        out["requests"] = requests
    return out


def _shared_memory_bytes(spec: StudySpec) -> int:
    """``/dev/shm`` of one runner process."""
    return spec.runner.shared_memory_bytes(spec.training.data_loader_workers)


def _cpu_times(cpu: str, count: int) -> str:
    """``count`` times a CPU quantity (``"500m"`` x 3 = ``"1500m"``)."""
    if count == 1:
        return cpu
    # spec.resources.cpu is millicores ("500m") or cores ("2", "0.5").
    each = int(cpu[:-1]) if cpu.endswith("m") else math.ceil(Decimal(cpu) * 1000)
    millicores = each * count
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def _kueue_labels(
    owner: Mapping[str, Any], spec: StudySpec, config: OperatorConfig
) -> dict[str, str]:
    """The labels of Kueue's pod integration: the LocalQueue (``spec.resources.queueName``,
    else the HPOStudy's own label, else the operator's default queue) and the HPOStudy's
    WorkloadPriorityClass, if any."""
    own = owner["metadata"].get("labels") or {}
    labels = {}
    queue = spec.resources.queue_name or own.get(KUEUE_QUEUE_LABEL) or config.queue_name
    if queue:
        labels[KUEUE_QUEUE_LABEL] = str(queue)
        if own.get(KUEUE_PRIORITY_CLASS_LABEL):
            labels[KUEUE_PRIORITY_CLASS_LABEL] = str(own[KUEUE_PRIORITY_CLASS_LABEL])
    return labels


def _tolerations(sizing: SizingDecision | None, config: OperatorConfig) -> list[dict[str, str]]:
    tolerations = [dict(t) for t in config.tolerations]
    if sizing is not None and sizing.kind != "CPU":
        tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _pod(
    owner: Mapping[str, Any],
    study: StudySpec,
    name: str,
    component: str,
    container: dict[str, Any],
    config: OperatorConfig,
    sizing: SizingDecision | None,
    grace_period: int,
) -> dict[str, Any]:
    """A pod of ``container``: kubetune's part, then ``spec.runner.template`` merged in."""
    processes = sizing.trials_per_device if sizing is not None else 1
    shm = format_bytes(_shared_memory_bytes(study) * processes)
    container["volumeMounts"] = [
        {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        {"name": SHM_VOLUME, "mountPath": SHM_PATH},
    ]
    spec: dict[str, Any] = {
        # The operator replaces failed runners itself: a runner that was OOMKilled must come
        # back on a larger resource, which a kubelet restart cannot do.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_period,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(config),
        "containers": [container],
        "volumes": [
            {"name": TMP_VOLUME, "emptyDir": {}},
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        ],
    }
    tolerations = _tolerations(sizing, config)
    if tolerations:
        spec["tolerations"] = tolerations
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": child_metadata(owner, name, component, config.extra_labels),
        "spec": spec,
    }
    if study.runner.template:
        _merge_template(pod, study.runner.template)
    return pod


#: Fields of the template's pod spec that are taken as they are (kubetune sets none of them).
_TEMPLATE_POD_FIELDS = (
    "affinity",
    "topologySpreadConstraints",
    "imagePullSecrets",
    "serviceAccountName",
    "automountServiceAccountToken",
    "priorityClassName",
    "runtimeClassName",
    "schedulerName",
)


def _merge_template(pod: dict[str, Any], template: Mapping[str, Any]) -> None:
    """Merge a validated ``spec.runner.template`` into ``pod``: the template adds to kubetune's
    part and never replaces it (validation refuses a template that would)."""
    template = without_nulls(template)
    meta, spec = pod["metadata"], pod["spec"]
    extra = template.get("metadata") or {}
    meta["labels"] = {**(extra.get("labels") or {}), **meta["labels"]}
    if extra.get("annotations"):
        meta["annotations"] = {**extra["annotations"], **(meta.get("annotations") or {})}
    own = template.get("spec") or {}
    for field in _TEMPLATE_POD_FIELDS:
        if field in own:
            spec[field] = own[field]
    if own.get("nodeSelector"):
        spec["nodeSelector"] = dict(own["nodeSelector"])
    spec["tolerations"] = [*spec.get("tolerations", []), *own.get("tolerations", [])]
    if not spec["tolerations"]:
        del spec["tolerations"]
    spec["volumes"] = [*spec["volumes"], *own.get("volumes", [])]
    spec["securityContext"] = {**spec["securityContext"], **own.get("securityContext", {})}
    if own.get("initContainers"):
        spec["initContainers"] = [
            {**init, "securityContext": _container_security()} for init in own["initContainers"]
        ]
    container = spec["containers"][0]
    for runner in own.get("containers", []):
        container["env"] = [*container["env"], *runner.get("env", [])]
        if runner.get("envFrom"):
            container["envFrom"] = list(runner["envFrom"])
        container["volumeMounts"] = [*container["volumeMounts"], *runner.get("volumeMounts", [])]
        for field, quantities in (runner.get("resources") or {}).items():
            resources = container.setdefault("resources", {})
            resources[field] = {**resources.get(field, {}), **quantities}


#: The options of the runner and estimate commands that write to the termination message.
_TERMINATION_MESSAGE = (TERMINATION_MESSAGE_OPTION, TERMINATION_LOG)


def _container(
    name: str,
    spec: StudySpec,
    config: OperatorConfig,
    command: Sequence[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
) -> dict[str, Any]:
    """A runner or estimate container: the image, ``command`` and kubetune's security
    context; it writes why it stopped, or its result, to its termination message."""
    return {
        "name": name,
        "image": spec.task.image or config.runner_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(command),
        "env": env,
        "resources": resources,
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _runner_env(
    owner: Mapping[str, Any],
    storage_secret_ref: tuple[str, str],
    sizing: SizingDecision,
    config: OperatorConfig,
) -> list[dict[str, Any]]:
    """The runner's environment: the storage URL from its Secret first, the metrics port last."""
    secret_name, secret_key = storage_secret_ref
    secret = {"secretKeyRef": {"name": secret_name, "key": secret_key}}
    env = [
        {"name": STORAGE_ENV, "valueFrom": secret},
        *_env(owner, config),
        {"name": DEVICE_KIND_ENV, "value": sizing.kind},
    ]
    if config.runner_metrics_port is not None:
        env.append({"name": METRICS_PORT_ENV, "value": str(config.runner_metrics_port)})
    return env


def _runner_annotations(sizing: SizingDecision, port: int | None) -> dict[str, str]:
    """What a runner pod tells the operator of its sizing, and Prometheus of its port."""
    annotations = {
        RESOURCE_ANNOTATION: sizing.resource,
        MEMORY_ANNOTATION: str(sizing.memory_bytes),
        KIND_ANNOTATION: sizing.kind,
        TRIALS_PER_DEVICE_ANNOTATION: str(sizing.trials_per_device),
    }
    if port is not None:
        annotations.update(
            {key: value.format(port=port) for key, value in PROMETHEUS_ANNOTATIONS.items()}
        )
    return annotations


def runner_pod(
    owner: Mapping[str, Any],
    spec: StudySpec,
    index: int,
    sizing: SizingDecision,
    storage_secret_ref: tuple[str, str],
    config: OperatorConfig,
) -> dict[str, Any]:
    """Runner pod ``<study>-runner-<index>``.

    Args:
        owner: The HPOStudy body (apiVersion, kind, metadata with name, namespace, uid).
        spec: The validated study spec.
        index: The runner's index, ``0 <= index < sizing.pods``.
        sizing: The resource it requests, and its runner processes
            (:meth:`~hpo_operator.sizing.SizingDecision.processes`).
        storage_secret_ref: ``(secret name, key)`` holding the storage URL.
        config: The operator's settings.
    """
    sizing = sizing.for_pod(index)
    meta = owner["metadata"]
    processes = sizing.trials_per_device
    command = [
        *RUNNER_COMMAND,
        *(STUDY_NAME_OPTION, optuna_study_name(meta["namespace"], meta["name"])),
        # Why a runner stopped (its task does not load) in one line, for the status.
        *_TERMINATION_MESSAGE,
        *([PROCESSES_OPTION, str(processes)] if processes > 1 else []),
    ]
    env = _runner_env(owner, storage_secret_ref, sizing, config)
    container = _container(RUNNER_CONTAINER, spec, config, command, env, _resources(spec, sizing))
    # Runners live for many trials, so Prometheus scrapes them (the annotations, or the
    # chart's PodMonitor on the named port) rather than waiting for pushes.
    port = config.runner_metrics_port
    if port is not None:
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    name = runner_pod_name(meta["name"], index)
    grace = config.grace_period_seconds
    pod = _pod(owner, spec, name, COMPONENT_RUNNER, container, config, sizing, grace)
    pod["metadata"]["labels"][INDEX_LABEL] = str(index)
    pod["metadata"]["labels"].update(_kueue_labels(owner, spec, config))
    pod["metadata"].setdefault("annotations", {}).update(_runner_annotations(sizing, port))
    return pod


def estimate_pod(
    owner: Mapping[str, Any], spec: StudySpec, key: str, config: OperatorConfig
) -> dict[str, Any]:
    """Pod ``<study>-estimate``: runs ``kubetune estimate`` once on CPU.

    It prints the peak training memory of the largest configuration as JSON and writes it to
    its termination message, where the operator reads it. ``key`` (see
    :func:`hpo_operator.sizing.estimate_key`) tells whether a finished estimate pod still
    describes the current spec.
    """
    meta = owner["metadata"]
    memory = format_bytes(parse_quantity(config.estimate_memory) + _shared_memory_bytes(spec))
    resources = {
        "requests": {"cpu": config.estimate_cpu, "memory": memory},
        "limits": {"memory": memory},
    }
    command = [*ESTIMATE_COMMAND, JSON_OPTION, *_TERMINATION_MESSAGE]
    container = _container("estimate", spec, config, command, _env(owner, config), resources)
    name = estimate_pod_name(meta["name"])
    pod = _pod(owner, spec, name, COMPONENT_ESTIMATE, container, config, None, 10)
    pod["metadata"].setdefault("annotations", {})[ESTIMATE_KEY_ANNOTATION] = key
    return pod
