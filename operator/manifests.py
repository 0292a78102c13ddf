"""Manifests of the objects the operator creates for a study (pure: dicts in, dicts out).

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

A runner pod runs ``trialsPerDevice`` runner processes on its one device
(``kubetune runner --processes N``) and asks for CPU and memory for each of them. With
``spec.resources.queueName`` (or the HPOStudy's own ``kueue.x-k8s.io/queue-name`` label, or
the operator's ``KUBETUNE_RUNNER_QUEUE_NAME``) it carries the labels of Kueue's pod
integration, and Kueue admits each runner pod on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from hpo_operator.config import OperatorConfig
from hpo_operator.sizing import GPU, SizingDecision, format_bytes

from kubetune_api.contract import (
    API_VERSION,
    COMPONENT_ESTIMATE,
    COMPONENT_LABEL,
    COMPONENT_RUNNER,
    ESTIMATE_KEY_ANNOTATION,
    INDEX_LABEL,
    INSTANCE_LABEL,
    KIND,
    KIND_ANNOTATION,
    KUEUE_PRIORITY_CLASS_LABEL,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY_LABEL,
    MEMORY_ANNOTATION,
    METRICS_PORT_ENV,
    NAME_LABEL,
    POD_NAME_ENV,
    PROMETHEUS_ANNOTATIONS,
    RESOURCE_ANNOTATION,
    RUNNER_CONTAINER,
    SHM_PATH,
    SHM_VOLUME,
    STORAGE_ENV,
    STORAGE_SECRET_KEY,
    STUDY_ENV,
    STUDY_KEY,
    STUDY_LABEL,
    TERMINATION_LOG,
    TMP_PATH,
    TMP_VOLUME,
    TRIALS_PER_DEVICE_ANNOTATION,
)
from kubetune_api.spec import StudySpec, dump_yaml, parse_quantity
from kubetune_study.pareto import ParetoPoint, front_document

__all__ = [
    "best_configmap",
    "best_configmap_name",
    "estimate_pod",
    "estimate_pod_name",
    "front_configmap",
    "optuna_study_name",
    "owner_reference",
    "runner_index",
    "runner_pod",
    "runner_pod_name",
    "spec_configmap",
    "spec_configmap_name",
    "storage_secret",
    "storage_secret_name",
    "study_document",
]


def runner_pod_name(study: str, index: int) -> str:
    return f"{study}-runner-{index}"


def runner_index(study: str, pod_name: str) -> int | None:
    """The index in a runner pod name of ``study``, or ``None`` if it is not one."""
    prefix = f"{study}-runner-"
    tail = pod_name[len(prefix) :] if pod_name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def estimate_pod_name(study: str) -> str:
    return f"{study}-estimate"


def spec_configmap_name(study: str) -> str:
    return f"{study}-spec"


def best_configmap_name(study: str) -> str:
    return f"{study}-best"


def storage_secret_name(study: str) -> str:
    return f"{study}-storage"


def optuna_study_name(namespace: str, name: str) -> str:
    """The Optuna study of an HPOStudy: unique per namespace and name."""
    return f"{namespace}.{name}"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to ``owner`` (an HPOStudy body)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner.get("kind", KIND),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(study: str, component: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **extra,
        NAME_LABEL: "kubetune",
        INSTANCE_LABEL: study,
        MANAGED_BY_LABEL: "kubetune-operator",
        COMPONENT_LABEL: component,
        STUDY_LABEL: study,
    }


def _metadata(
    owner: Mapping[str, Any],
    name: str,
    component: str,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    study = owner["metadata"]["name"]
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": _labels(study, component, extra_labels or {}),
        "ownerReferences": [owner_reference(owner)],
    }


def study_document(name: str, namespace: str, spec: StudySpec) -> str:
    """The HPOStudy YAML document a runner reads from ``KUBETUNE_STUDY``."""
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return dump_yaml(document)


def spec_configmap(owner: Mapping[str, Any], spec: StudySpec) -> dict[str, Any]:
    """ConfigMap ``<study>-spec`` holding the study document for the pods."""
    meta = owner["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, spec_configmap_name(meta["name"]), "study-spec"),
        "data": {STUDY_KEY: study_document(meta["name"], meta["namespace"], spec)},
    }


def best_configmap(
    owner: Mapping[str, Any],
    spec: StudySpec,
    value: float,
    params: Mapping[str, Any],
    trial: int,
) -> dict[str, Any]:
    """ConfigMap ``<study>-best``: the best trial's value, number and parameters.

    ``params.json`` holds the parameters with their types; each parameter is also a key of its
    own (as text) so a pod can take one by ``configMapKeyRef`` or all by ``envFrom``.
    """
    meta = owner["metadata"]
    data = {str(k): _text(v) for k, v in params.items()}
    data.update(
        {
            "params.json": json.dumps(dict(params), sort_keys=True),
            "value": repr(float(value)),
            "trial": str(trial),
            "metric": spec.primary_objective.metric,
            "direction": spec.primary_objective.direction,
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, best_configmap_name(meta["name"]), "best-params"),
        "data": data,
    }


#: Front trials the ConfigMap holds at most: a ConfigMap is limited to 1 MiB, and a front
#: beyond this is sampled evenly along it (``size`` still counts every trial).
FRONT_CONFIGMAP_LIMIT = 1000


def front_configmap(
    owner: Mapping[str, Any], spec: StudySpec, front: Sequence[ParetoPoint]
) -> dict[str, Any]:
    """ConfigMap ``<study>-best`` of a study with several objectives: its Pareto front.

    ``front.yaml`` is the document ``kubetune results --output`` writes under
    ``paretoFront``: the objectives, the front's size, and each trial's number, value of each
    objective by metric, and parameters (with their types).
    """
    meta = owner["metadata"]
    document = front_document(front, spec.all_objectives, FRONT_CONFIGMAP_LIMIT)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, best_configmap_name(meta["name"]), "best-params"),
        "data": {
            "front.yaml": dump_yaml(document),
            "size": str(len(front)),
        },
    }


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def storage_secret(owner: Mapping[str, Any], url: str) -> dict[str, Any]:
    """Secret ``<study>-storage`` with the operator's default storage URL (key ``url``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(owner, storage_secret_name(owner["metadata"]["name"]), "storage"),
        "stringData": {STORAGE_SECRET_KEY: url},
    }


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
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
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
        "metadata": _metadata(owner, name, component, config.extra_labels),
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
    template = _without_nulls(template)
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


def _without_nulls(value: Any) -> Any:
    """``value`` without null fields, as the API server stores a template (it prunes them)."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


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
        index: The runner's index, ``0 <= index < parallelism``.
        sizing: The resource it requests.
        storage_secret_ref: ``(secret name, key)`` holding the storage URL.
        config: The operator's settings.
    """
    meta = owner["metadata"]
    processes = sizing.trials_per_device
    secret_name, secret_key = storage_secret_ref
    env = _env(owner, config)
    env.insert(
        0,
        {
            "name": STORAGE_ENV,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": secret_key}},
        },
    )
    # Runners live for many trials, so Prometheus scrapes them (the annotations, or the
    # chart's PodMonitor on the named port) rather than waiting for pushes.
    port = config.runner_metrics_port
    if port is not None:
        env.append({"name": METRICS_PORT_ENV, "value": str(port)})
    container: dict[str, Any] = {
        "name": RUNNER_CONTAINER,
        "image": spec.task.image or config.runner_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": [
            "kubetune",
            "runner",
            "--study-name",
            optuna_study_name(meta["namespace"], meta["name"]),
            # Why a runner stopped (its task does not load) in one line, for the status.
            "--termination-message-path",
            TERMINATION_LOG,
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        "env": env,
        "resources": _resources(spec, sizing),
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if port is not None:
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    pod = _pod(
        owner,
        spec,
        runner_pod_name(meta["name"], index),
        COMPONENT_RUNNER,
        container,
        config,
        sizing,
        config.grace_period_seconds,
    )
    pod["metadata"]["labels"][INDEX_LABEL] = str(index)
    pod["metadata"]["labels"].update(_kueue_labels(owner, spec, config))
    pod["metadata"].setdefault("annotations", {}).update(
        {
            RESOURCE_ANNOTATION: sizing.resource,
            MEMORY_ANNOTATION: str(sizing.memory_bytes),
            KIND_ANNOTATION: sizing.kind,
            TRIALS_PER_DEVICE_ANNOTATION: str(processes),
        }
    )
    if port is not None:
        pod["metadata"]["annotations"].update(
            {key: value.format(port=port) for key, value in PROMETHEUS_ANNOTATIONS.items()}
        )
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
    container = {
        "name": "estimate",
        "image": spec.task.image or config.runner_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": [
            "kubetune",
            "estimate",
            "--json",
            "--termination-message-path",
            TERMINATION_LOG,
        ],
        "env": _env(owner, config),
        "resources": {
            "requests": {"cpu": config.estimate_cpu, "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": _container_security(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = _pod(
        owner,
        spec,
        estimate_pod_name(meta["name"]),
        COMPONENT_ESTIMATE,
        container,
        config,
        None,
        10,
    )
    pod["metadata"].setdefault("annotations", {})[ESTIMATE_KEY_ANNOTATION] = key
    return pod
