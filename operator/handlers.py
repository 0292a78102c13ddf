"""The kopf handlers of the operator: each one hands its work to :mod:`hpo_operator.runtime`
(start and stop) or :mod:`hpo_operator.reconcile.study` (a pass, a deletion).

Run the operator with either of::

    kopf run -m hpo_operator.handlers --all-namespaces      # or --namespace NS (repeatable)
    python -m hpo_operator --all-namespaces

It needs a kubeconfig (or the in-cluster service account) allowed to: get/list/watch/patch
``hpostudies`` and patch ``hpostudies/status``; create/delete/list/watch pods; create/get/update
configmaps; create/get/update secrets (only for the default-storage Secret) and get the
secrets named by studies; list/watch nodes; create/patch/list/watch events (the kubelet's
``FailedMount`` events say why a runner's volume cannot be mounted). Settings are environment
variables (see :mod:`hpo_operator.config`), read when the operator starts, except
``KUBETUNE_RECONCILE_INTERVAL``: kopf fixes timer intervals at registration, so importing this
module (the entry point of ``kopf run``) registers the handlers with :func:`register`, which
reads it.

What a pass costs does not grow with the cluster. The study's pods and the cluster's nodes come
from caches that watches keep (the kopf indexes :func:`study_pods` and :func:`cluster_nodes`;
the pod watch asks the API server only for pods with the study label; :func:`mount_failures`
keeps the kubelet's ``FailedMount`` events, which the API server filters), so a pass in steady
state makes no list call. The storages are shared by URL (:class:`hpo_operator._cluster.Storages`):
one that cannot be reached holds up one pass at a time, never another storage's studies.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

import kopf
from hpo_operator import runtime as operator_runtime
from hpo_operator.config import OperatorConfig, reconcile_interval
from hpo_operator.reconcile import ObservedPod, observe_pod
from hpo_operator.reconcile.state import (
    ALL_NODES,
    EventIndex,
    Indexes,
    Logger,
    NodeIndex,
    PodIndex,
    StudyState,
)
from hpo_operator.reconcile.study import delete_study, reconcile_study
from hpo_operator.runtime import EVENTS, Runtime
from hpo_operator.sizing import NodeInfo, node_info

from kubetune_api.contract import GROUP, PLURAL, STUDY_LABEL, VERSION

__all__ = [
    "INTERVAL",
    "close",
    "cluster_nodes",
    "configure",
    "login",
    "mount_failures",
    "on_change",
    "on_delete",
    "on_tick",
    "register",
    "study_pods",
]

RESOURCE = (GROUP, VERSION, PLURAL)
#: Seconds between two looks at a study, as the timer of this process was registered.
INTERVAL = reconcile_interval()


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
    """Read the settings, start the operator's runtime (kept in ``memo``), set kopf's."""
    config = OperatorConfig.from_env()
    memo[operator_runtime.MEMO_KEY] = operator_runtime.start(config)
    operator_runtime.configure(settings)
    logger.info(
        "kubetune operator: reconcile every %ss, runner image %s, extra labels %s",
        config.reconcile_interval,
        config.runner_image,
        dict(config.extra_labels),
    )


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


def close(memo: kopf.Memo, **_: Any) -> None:
    """Release the runtime: storage connections and the metrics port."""
    runtime = memo.get(operator_runtime.MEMO_KEY)
    if isinstance(runtime, Runtime):
        runtime.close()


def study_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ObservedPod]:
    """The cache of the studies' pods, by ``(namespace, study)``, fed by a pod watch."""
    if namespace is None:
        return {}
    return {(namespace, labels[STUDY_LABEL]): observe_pod(body)}


def mount_failures(body: kopf.Body, **_: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """The kubelet's ``FailedMount`` events as ``(time, message)``, by ``(namespace, pod uid)``
    (a replacement pod has its predecessor's name, not its uid)."""
    pod = body.get("involvedObject") or {}
    if pod.get("kind") != "Pod" or body.get("reason") != "FailedMount":
        return {}
    when = body.get("lastTimestamp") or body.get("eventTime") or ""
    return {(str(pod.get("namespace")), str(pod.get("uid"))): (str(when), str(body.get("message")))}


def cluster_nodes(body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """The cache of what sizing needs of each node, fed by a node watch."""
    return {ALL_NODES: node_info(body)}


class StudyPassArgs(TypedDict):
    """What kopf passes a study's change and timer handlers that a pass uses (with more that
    it does not): the indexes under their handlers' names."""

    body: kopf.Body
    patch: kopf.Patch
    logger: Logger
    memo: kopf.Memo
    study_pods: PodIndex
    cluster_nodes: NodeIndex
    mount_failures: EventIndex


def on_change(**kwargs: Unpack[StudyPassArgs]) -> None:
    """React at once to a new or edited study (the timer would within its interval)."""
    _study_pass(kwargs, wait=True)


def on_tick(**kwargs: Unpack[StudyPassArgs]) -> None:
    """Follow the study's progress: trials finish without any Kubernetes event. A tick that
    finds a pass of the study running (a change handler's) is skipped, not queued."""
    _study_pass(kwargs, wait=False)


def _study_pass(args: StudyPassArgs, *, wait: bool) -> None:
    memo = args["memo"]
    indexes = Indexes(args["study_pods"], args["cluster_nodes"], args["mount_failures"])
    runtime, state = Runtime.of(memo), StudyState.of(memo)
    reconcile_study(args["body"], args["patch"], args["logger"], runtime, state, indexes, wait=wait)


def on_delete(
    body: kopf.Body, logger: Logger, memo: kopf.Memo, study_pods: PodIndex, **_: Any
) -> None:
    """Stop the runners; delete the Optuna study only with ``deletionPolicy: Delete``."""
    delete_study(body, logger, Runtime.of(memo), StudyState.of(memo), study_pods)


def register(registry: kopf.OperatorRegistry, interval: float) -> None:
    """Register the handlers in ``registry``, the studies' timer every ``interval`` seconds."""
    # After a failed pass (API or storage hiccup), try again soon rather than kopf's 60 s.
    backoff = max(interval, 5.0)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.on.cleanup(registry=registry)(close)
    kopf.index("pods", labels={STUDY_LABEL: kopf.PRESENT}, registry=registry)(study_pods)
    kopf.index(*EVENTS, registry=registry)(mount_failures)
    kopf.index("nodes", registry=registry)(cluster_nodes)
    change, tick, delete = _by_name(on_change), _by_name(on_tick), _by_name(on_delete)
    kopf.on.create(*RESOURCE, backoff=backoff, registry=registry)(change)
    kopf.on.resume(*RESOURCE, backoff=backoff, registry=registry)(change)
    kopf.on.update(*RESOURCE, field="spec", backoff=backoff, registry=registry)(change)
    kopf.timer(*RESOURCE, interval=interval, backoff=backoff, registry=registry)(tick)
    kopf.on.delete(*RESOURCE, registry=registry)(delete)


def _by_name(handler: Callable[..., None]) -> Any:
    """``handler`` for kopf's decorators, whose callback types list only kopf's own keyword
    arguments, not the indexes kopf also passes by name."""
    return handler


# This module is the entry point of `kopf run -m hpo_operator.handlers` (and of
# `python -m hpo_operator`): importing it registers the handlers in kopf's default registry.
register(kopf.get_default_registry(), INTERVAL)
