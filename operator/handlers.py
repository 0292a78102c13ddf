"""kopf handlers: gather the inputs, call :func:`hpo_operator.reconcile.decide`, apply the plan.

Run the operator with either of::

    kopf run -m hpo_operator.handlers --all-namespaces      # or --namespace NS (repeatable)
    python -m hpo_operator --all-namespaces

It needs a kubeconfig (or the in-cluster service account) allowed to: get/list/watch/patch
``hpostudies`` and patch ``hpostudies/status``; create/delete/list/watch pods; create/get/update
configmaps; create/get/update secrets (only for the default-storage Secret) and get the
secrets named by studies; list/watch nodes; create/patch/list/watch events (the kubelet's
``FailedMount`` events say why a runner's volume cannot be mounted). Settings are environment
variables (see :mod:`hpo_operator.config`). ``KUBETUNE_RECONCILE_INTERVAL`` is read when this
module is imported, because kopf fixes timer intervals at registration.

Every pass over a study is the same idempotent reconcile, run on create, resume, spec update
and every ``KUBETUNE_RECONCILE_INTERVAL`` seconds. Children have deterministic names, so a
restarted operator finds its pods and "already exists" means "already done".

What a pass costs does not grow with the cluster. The study's pods and the cluster's nodes come
from caches that watches keep (the kopf indexes :func:`study_pods` and :func:`cluster_nodes`;
the pod watch asks the API server only for pods with the study label; :func:`mount_failures`
keeps the kubelet's ``FailedMount`` events, which the API server filters), so a pass in steady
state makes no list call; it writes the status only when it changed, and re-reads a storage
Secret at most every :data:`SECRET_REFRESH` seconds. What the operator keeps about a study
between passes (:class:`StudyState`) lives in the study's kopf memo and goes with it. The
storages are shared by URL (:class:`hpo_operator._cluster.Storages`): one that cannot be
reached holds up one pass at a time, never another storage's studies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import kopf
import kubernetes
import optuna
from hpo_operator import _cluster as cluster
from hpo_operator.config import OperatorConfig, reconcile_interval
from hpo_operator.manifests import (
    best_configmap,
    front_configmap,
    spec_configmap,
    storage_secret,
    without_nulls,
)
from hpo_operator.metrics import OperatorMetrics
from hpo_operator.names import optuna_study_name, storage_secret_name
from hpo_operator.pods import estimate_pod, runner_pod
from hpo_operator.reconcile import (
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    Event,
    EventReason,
    ObservedPod,
    Plan,
    PodExpectations,
    WriteBest,
    WriteFront,
    decide,
    observe_pod,
    with_mount_failure,
)
from hpo_operator.sizing import NodeInfo, node_info
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune_api.contract import (
    FINALIZER,
    GROUP,
    PLURAL,
    STORAGE_SECRET_KEY,
    STUDY_KEY,
    STUDY_LABEL,
    VERSION,
)
from kubetune_api.spec import SpecError, StudySpec, validate_spec_mapping
from kubetune_api.status import ConditionReason, ConditionType, StudyStatus, set_condition
from kubetune_study.metrics import start_metrics_server
from kubetune_study.progress import StudyProgress
from kubetune_study.storage import StorageError, redact
from kubetune_study.warmstart import WarmStartReport, source_study_name

__all__ = [
    "StudyState",
    "close",
    "cluster_nodes",
    "configure",
    "login",
    "mount_failures",
    "on_change",
    "on_delete",
    "on_tick",
    "reconcile_study",
    "study_pods",
]

INTERVAL = reconcile_interval()
# After a failed pass (API or storage hiccup), try again soon rather than kopf's default 60 s.
BACKOFF = max(INTERVAL, 5.0)
RESOURCE = (GROUP, VERSION, PLURAL)

#: Seconds a storage URL read from a Secret is used before the Secret is read again (it is
#: also read again after the storage could not be reached).
SECRET_REFRESH = 60.0
#: Worker threads for the passes (kopf runs synchronous handlers in a thread pool). A pass
#: mostly waits for the API server and the storage; one storage that cannot be reached holds
#: at most one of them (see :class:`hpo_operator._cluster.Storages`).
WORKERS = 16
#: The key of :func:`cluster_nodes` under which every node is found.
ALL_NODES = "nodes"
#: The core events the operator watches: the kubelet's, about pods whose volumes cannot be
#: mounted (a pod only shows ``ContainerCreating`` meanwhile). The API server filters them.
EVENTS = ("v1", "events")
MOUNT_EVENTS_SELECTOR = "involvedObject.kind=Pod,reason=FailedMount"

# Operator-wide, set by configure() at startup. Per-study state is in the studies' memos.
_config = OperatorConfig()
_client: Any = None
_metrics_server: Any = None
# One set of metrics per process (the default registry), served on KUBETUNE_METRICS_PORT.
_metrics = OperatorMetrics()
_storages = cluster.Storages()

Logger = logging.Logger | logging.LoggerAdapter[Any]
# Repeated per-pass warnings go here rather than to kopf's object logger, which would post
# each of them as a Kubernetes Event (the decision posts one when the condition changes).
log = logging.getLogger("kubetune.operator")

PodIndex = kopf.Index[tuple[str, str], ObservedPod]
NodeIndex = kopf.Index[str, NodeInfo]
EventIndex = kopf.Index[tuple[str, str], tuple[str, str]]
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass
class StudyState:
    """What the operator keeps about one study between passes, in the study's kopf memo
    (kopf drops it with the study)."""

    #: One pass of the study at a time (its change handlers and its timer run concurrently).
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The study in its storage: loaded once, its warm start's report.
    storage: cluster.StudyStorage = field(default_factory=cluster.StudyStorage)
    #: Pods this operator created or deleted that the pod cache does not show yet.
    pods: PodExpectations = field(default_factory=PodExpectations)
    #: The spec document last written to the ``<study>-spec`` ConfigMap.
    spec_written: str | None = None
    #: The URL last written to the default-storage Secret.
    secret_written: str | None = None
    #: ``(secret, key)``, the URL read from it, and when (monotonic).
    secret_url: tuple[tuple[str, str], str, float] | None = None
    #: The resourceVersion of the body the last pass decided on, and the status it wrote.
    written: tuple[str, Mapping[str, Any]] = ("", {})


def _state(memo: kopf.Memo) -> StudyState:
    state = memo.get("kubetune")
    if not isinstance(state, StudyState):
        state = memo.setdefault("kubetune", StudyState())
    return state


# The kubernetes client's type hints want V1* models; plain dicts are accepted.
k8s: Any = kubernetes


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    """Every operator setting in one place."""
    global _config, _client, _metrics_server
    _config = OperatorConfig.from_env()
    if _config.metrics_port is not None and _metrics_server is None:
        _metrics_server = start_metrics_server(_config.metrics_port)
    # Heartbeats and fail_stale_trials are "experimental" in Optuna; kubetune relies on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    _client = cluster.api_client(connections=WORKERS)
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping out of the user-facing status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "kubetune-operator"
    settings.peering.standalone = True
    settings.watching.server_timeout = 60
    # The pod cache holds the studies' pods only: the API server filters the watch.
    settings.watching.label_selectors["pods"] = STUDY_LABEL
    settings.watching.field_selectors[EVENTS] = MOUNT_EVENTS_SELECTOR
    settings.execution.max_workers = WORKERS
    settings.networking.request_timeout = 30
    logger.info(
        "kubetune operator: reconcile every %ss, runner image %s, extra labels %s",
        INTERVAL,
        _config.runner_image,
        dict(_config.extra_labels),
    )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else ``$KUBECONFIG`` as it is now.

    In a pod the API server is ``$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, as
    client-go and the kubernetes client find it; kopf's own service-account login names
    ``kubernetes.default.svc``, which needs the cluster's DNS to work before the operator can.
    kopf's default login goes through the kubernetes client, which reads ``KUBECONFIG`` once
    at import; reading it at login lets one process (a test) point the operator elsewhere.
    """
    in_pod = kopf.login_with_service_account(**kwargs)
    if in_pod is not None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if host:
            host = f"[{host}]" if ":" in host else host
            return dataclasses.replace(in_pod, server=f"https://{host}:{port}")
        return in_pod
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
def close(**_: Any) -> None:
    """Release storage connections and the metrics port (tests start and stop the operator
    in one process)."""
    global _metrics_server
    if _metrics_server is not None:
        _metrics_server.shutdown()
        _metrics_server.server_close()
        _metrics_server = None
    _storages.close()


@kopf.index("pods", labels={STUDY_LABEL: kopf.PRESENT})
def study_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObservedPod]:
    """The cache of the studies' pods, by ``(namespace, study)``, fed by a pod watch."""
    if namespace is None:
        return {}
    return {(namespace, labels[STUDY_LABEL]): observe_pod(body)}


@kopf.index(*EVENTS)
def mount_failures(body: kopf.Body, **_: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """The kubelet's ``FailedMount`` events as ``(time, message)``, by ``(namespace, pod uid)``
    (a replacement pod has its predecessor's name, not its uid)."""
    pod = body.get("involvedObject") or {}
    if pod.get("kind") != "Pod" or body.get("reason") != "FailedMount":
        return {}
    when = body.get("lastTimestamp") or body.get("eventTime") or ""
    return {(str(pod.get("namespace")), str(pod.get("uid"))): (str(when), str(body.get("message")))}


@kopf.index("nodes")
def cluster_nodes(body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """The cache of what sizing needs of each node, fed by a node watch."""
    return {ALL_NODES: node_info(body)}


@kopf.on.create(*RESOURCE, backoff=BACKOFF)
@kopf.on.resume(*RESOURCE, backoff=BACKOFF)
@kopf.on.update(*RESOURCE, field="spec", backoff=BACKOFF)
def on_change(
    body: kopf.Body, patch: kopf.Patch, logger: Logger, memo: kopf.Memo, **kwargs: Any
) -> None:
    """React at once to a new or edited study (the timer would within its interval)."""
    reconcile_study(body, patch, logger, memo, _indexes(kwargs))


@kopf.timer(*RESOURCE, interval=INTERVAL, backoff=BACKOFF)
def on_tick(
    body: kopf.Body, patch: kopf.Patch, logger: Logger, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Follow the study's progress: trials finish without any Kubernetes event. A tick that
    finds a pass of the study running (a change handler's) is skipped, not queued."""
    reconcile_study(body, patch, logger, memo, _indexes(kwargs), wait=False)


@dataclass(frozen=True)
class Indexes:
    """The watch-fed caches a pass reads (kopf passes them to handlers by name)."""

    pods: PodIndex
    nodes: NodeIndex
    mounts: EventIndex


def _indexes(kwargs: Mapping[str, Any]) -> Indexes:
    return Indexes(kwargs["study_pods"], kwargs["cluster_nodes"], kwargs["mount_failures"])


@kopf.on.delete(*RESOURCE)
def on_delete(body: kopf.Body, logger: Logger, memo: kopf.Memo, **kwargs: Any) -> None:
    """Stop the runners; delete the Optuna study only with ``deletionPolicy: Delete``."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    core = k8s.client.CoreV1Api(_client)
    state = _state(memo)
    cached = _snapshot(kwargs["study_pods"], (namespace, name))
    pods = state.pods.children(cached, time.monotonic())
    doomed = [pod.name for pod in pods if not pod.deleting]
    for pod_name in doomed:
        cluster.delete_pod(core, namespace, pod_name)
    state.pods.deleted(doomed, time.monotonic())
    if pods:
        raise kopf.TemporaryError(f"waiting for {len(pods)} pod(s) to stop", delay=2)
    _metrics.forget(namespace, name)
    try:
        spec = validate_spec_mapping(dict(body.get("spec") or {}))
    except SpecError:
        return
    study_name = optuna_study_name(namespace, name)
    if spec.storage.deletion_policy != "Delete":
        logger.info("keeping Optuna study %s (deletionPolicy Retain)", study_name)
        return
    try:
        url, _ref = _storage_url(core, body, spec, state, write_secret=False)
        optuna.delete_study(study_name=study_name, storage=_storages.get(url))
    except KeyError:
        return  # the study was never created
    except (StorageError, cluster.StorageMissing, ApiException) as error:
        # Do not hold the HPOStudy forever for a storage that is gone; say so instead.
        message = f"could not delete Optuna study {study_name}: {_first_line(error)}"
        kopf.warn(body, reason=EventReason.STUDY_NOT_DELETED, message=message)
        return
    kopf.info(body, reason=EventReason.STUDY_DELETED, message=f"deleted Optuna study {study_name}")


# --------------------------------------------------------------------------- one pass


def _snapshot(index: kopf.Index[_K, _V], key: _K) -> list[_V]:
    """The values under ``key``, copied. The watches update the indexes on kopf's event loop
    while passes read them in worker threads: a copy that meets an update starts over."""
    while True:
        try:
            return list(index.get(key, ()))
        except RuntimeError:  # "changed size during iteration"
            continue


def reconcile_study(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: Logger,
    memo: kopf.Memo,
    indexes: Indexes,
    *,
    wait: bool = True,
) -> None:
    """One idempotent pass over a study: observe, decide, act, write status (timed and
    counted in the operator's metrics). Without ``wait``, nothing is done while another pass
    of the study runs."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    namespace, name = meta["namespace"], meta["name"]
    state = _state(memo)
    if not state.lock.acquire(blocking=wait):
        return
    try:
        with _metrics.reconcile_duration.time():
            _reconcile(body, patch, logger, state, indexes)
    except ApiException as error:
        _metrics.reconcile_error(namespace, name, api_status=error.status)
        raise
    except Exception:
        _metrics.reconcile_error(namespace, name)
        raise
    finally:
        state.lock.release()


def _reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: Logger,
    state: StudyState,
    indexes: Indexes,
) -> None:
    meta = body["metadata"]
    current: Mapping[str, Any] = body.get("status") or {}
    raw = current
    version, written = state.written
    if version == meta.get("resourceVersion"):
        # Our last status patch is not in this body yet (a timer and a change handler ran
        # back to back): decide from what was written, not from the older status.
        raw = written
    plan = _plan(body, _read_status(raw, logger), state, indexes)
    _apply(body, plan, logger, state)
    new_status = plan.status.to_api()
    _patch_status(patch, current, new_status)
    state.written = (str(meta.get("resourceVersion")), new_status)
    _metrics.observe(meta["namespace"], meta["name"], plan.status)
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _read_status(raw: Mapping[str, Any], logger: Logger) -> StudyStatus:
    try:
        return StudyStatus.from_api(raw)
    except ValidationError as error:  # written by hand or by another version: start over
        logger.warning("the study's status is not one kubetune wrote; ignoring it: %s", error)
        return StudyStatus()


def _plan(
    body: Mapping[str, Any],
    status: StudyStatus,
    state: StudyState,
    indexes: Indexes,
) -> Plan:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 1)
    study_name = optuna_study_name(namespace, name)
    core = k8s.client.CoreV1Api(_client)
    now = dt.datetime.now(dt.UTC)
    try:
        spec = validate_spec_mapping(dict(body.get("spec") or {}))
    except SpecError as error:
        plan = _invalid_plan(status, generation, error, now)
    else:
        progress, warm_start, storage_error = _progress(core, body, spec, state, generation)
        if storage_error:
            log.warning("study %s: storage unavailable: %s", study_name, storage_error)
            _metrics.storage_error(namespace, name)
        cached = _snapshot(indexes.pods, (namespace, name))
        children = [
            with_mount_failure(pod, _snapshot(indexes.mounts, (namespace, pod.uid)))
            for pod in state.pods.children(cached, time.monotonic())
        ]
        list_nodes = partial(_snapshot, indexes.nodes, ALL_NODES)
        plan = decide(
            spec,
            status,
            generation,
            children,
            progress,
            cluster.sizing_input(spec, status, children, list_nodes),
            now,
            storage_error=storage_error,
            max_runner_failures=_config.max_runner_failures,
            start_policy=_config.runner_start,
            warm_start=warm_start,
        )
    plan.status.study_name = study_name
    return plan


def _progress(
    core: Any, body: Mapping[str, Any], spec: StudySpec, state: StudyState, generation: int
) -> tuple[StudyProgress | None, WarmStartReport | None, str | None]:
    """The study's progress and its warm start's report, or why the storage cannot be read
    (never with the URL in it)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    name = optuna_study_name(namespace, meta["name"])
    # fromStudy.hpoStudy names an HPOStudy of this namespace, whose Optuna study is named so.
    source = source_study_name(spec, partial(optuna_study_name, namespace))
    try:
        url, _secret_ref = _storage_url(core, body, spec, state)
        _ensure_spec_configmap(core, body, spec, state)
        progress, warm_start = state.storage.progress(
            _storages, url, generation, name, spec, source
        )
        return progress, warm_start, None
    except (StorageError, cluster.StorageMissing) as error:
        state.secret_url = None  # the Secret may name another storage now
        return None, None, str(error)
    except Exception as error:  # sqlalchemy/psycopg2 raise many kinds
        state.secret_url = None
        return None, None, f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return redact(text[0]) if text else ""


def _invalid_plan(status: StudyStatus, generation: int, error: SpecError, now: dt.datetime) -> Plan:
    message = "; ".join(str(e) for e in error.errors)[:4000]
    ready, invalid = ConditionType.READY, ConditionReason.INVALID_SPEC
    conditions = set_condition(status.conditions, ready, False, invalid, message, generation, now)
    old = status.condition(ready)
    repeated = old is not None and old.reason == invalid and old.message == message
    events = () if repeated else (Event("Warning", invalid, message),)
    new = StudyStatus(conditions=conditions, observed_generation=generation)
    return Plan((), new, events)


def _storage_url(
    core: Any,
    body: Mapping[str, Any],
    spec: StudySpec,
    state: StudyState,
    *,
    write_secret: bool = True,
) -> tuple[str, tuple[str, str]]:
    """The storage URL and the ``(secret, key)`` runner pods read it from.

    A URL read from a Secret is used for :data:`SECRET_REFRESH` seconds (until then an edited
    Secret is seen only once its old storage fails). With the operator's own
    ``KUBETUNE_STORAGE_URL``, the Secret ``<study>-storage`` is written for the pods (once per
    process and study, unless ``write_secret`` is false).
    """
    meta = body["metadata"]
    namespace = meta["namespace"]
    ref = spec.storage.secret_ref
    secret = (ref.name, ref.key) if ref is not None else _config.default_storage_secret
    if secret is not None:
        cached = state.secret_url
        now = time.monotonic()
        if cached is not None and cached[0] == secret and now - cached[2] < SECRET_REFRESH:
            return cached[1], secret
        read = cluster.read_secret(core, namespace, *secret)
        state.secret_url = (secret, read, now)
        return read, secret
    url = _config.default_storage_url
    if url:
        if write_secret and state.secret_written != url:
            document = storage_secret(body, url)
            cluster.create_or_replace(
                lambda: core.create_namespaced_secret(namespace, document),
                lambda: core.replace_namespaced_secret(
                    document["metadata"]["name"], namespace, document
                ),
            )
            state.secret_written = url
        return url, (storage_secret_name(meta["name"]), STORAGE_SECRET_KEY)
    raise cluster.StorageMissing(
        "no storage: set spec.storage.secretRef, or run the operator with "
        "KUBETUNE_DEFAULT_STORAGE_SECRET or KUBETUNE_STORAGE_URL"
    )


def _ensure_spec_configmap(
    core: Any, body: Mapping[str, Any], spec: StudySpec, state: StudyState
) -> None:
    configmap = spec_configmap(body, spec)
    content = configmap["data"][STUDY_KEY]
    if state.spec_written == content:
        return
    namespace = body["metadata"]["namespace"]
    cluster.create_or_replace(
        lambda: core.create_namespaced_config_map(namespace, configmap),
        lambda: core.replace_namespaced_config_map(
            configmap["metadata"]["name"], namespace, configmap
        ),
    )
    state.spec_written = content


# --------------------------------------------------------------------------- acting


def _apply(body: Mapping[str, Any], plan: Plan, logger: Logger, state: StudyState) -> None:
    meta = body["metadata"]
    namespace = meta["namespace"]
    core = k8s.client.CoreV1Api(_client)
    spec: StudySpec | None = None
    secret_ref: tuple[str, str] | None = None
    for action in plan.actions:
        if isinstance(action, DeletePod):
            logger.info("deleting pod %s: %s", action.name, action.reason)
            cluster.delete_pod(core, namespace, action.name)
            state.pods.deleted([action.name], time.monotonic())
            continue
        if spec is None:
            spec = validate_spec_mapping(dict(body["spec"]))
        if isinstance(action, CreateRunner):
            if secret_ref is None:
                secret_ref = _storage_url(core, body, spec, state)[1]
            pod = runner_pod(body, spec, action.index, action.sizing, secret_ref, _config)
            cluster.create(partial(core.create_namespaced_pod, namespace, pod))
            state.pods.created(observe_pod(pod), time.monotonic())
        elif isinstance(action, CreateEstimatePod):
            pod = estimate_pod(body, spec, action.key, _config)
            cluster.create(partial(core.create_namespaced_pod, namespace, pod))
            state.pods.created(observe_pod(pod), time.monotonic())
        elif isinstance(action, WriteBest | WriteFront):
            configmap = (
                best_configmap(body, spec, action.value, action.params, action.trial)
                if isinstance(action, WriteBest)
                else front_configmap(body, spec, action.front)
            )
            cluster.create_or_replace(
                partial(core.create_namespaced_config_map, namespace, configmap),
                partial(
                    core.replace_namespaced_config_map,
                    configmap["metadata"]["name"],
                    namespace,
                    configmap,
                ),
            )


def _patch_status(patch: kopf.Patch, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Write ``new`` as the status; nested keys that disappeared are removed (merge patch).
    Fields that did not change are left out, so a pass that changed nothing writes nothing. A
    merge patch's ``null`` removes a key, so a field ``None`` in ``new`` and absent in ``old``
    is unchanged."""
    for key, value in new.items():
        previous = old.get(key)
        if without_nulls(value) == without_nulls(previous):
            continue
        if isinstance(value, dict) and isinstance(previous, Mapping):
            value = {**{k: None for k in previous if k not in value}, **value}
        patch.status[key] = value
