"""What the operator keeps while it runs, for every study: its settings, its API client, its
metrics and the studies' storages (:class:`Runtime`), kept in kopf's operator memo.

:func:`start` makes it when the operator starts (the ``@kopf.on.startup`` handler) and
:meth:`Runtime.close` releases it when it stops; kopf gives each study's handlers a shallow
copy of the operator memo, so every pass finds the same :class:`Runtime` under
:data:`MEMO_KEY`. What the operator keeps about one study lives in that study's own memo
(:class:`hpo_operator.reconcile.state.StudyState`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import optuna
from hpo_operator import _cluster as cluster
from hpo_operator.config import OperatorConfig
from hpo_operator.metrics import OperatorMetrics, process_metrics

from kubetune_api.contract import FINALIZER, GROUP, OPERATOR_NAME, STUDY_LABEL
from kubetune_study.metrics import start_metrics_server

__all__ = [
    "EVENTS",
    "MEMO_KEY",
    "MOUNT_EVENTS_SELECTOR",
    "WORKERS",
    "Runtime",
    "configure",
    "start",
]

#: Worker threads for the passes (kopf runs synchronous handlers in a thread pool). A pass
#: mostly waits for the API server and the storage; one storage that cannot be reached holds
#: at most one of them (see :class:`hpo_operator._cluster.Storages`).
WORKERS = 16
#: The core events the operator watches: the kubelet's, about pods whose volumes cannot be
#: mounted (a pod only shows ``ContainerCreating`` meanwhile). The API server filters them.
EVENTS = ("v1", "events")
MOUNT_EVENTS_SELECTOR = "involvedObject.kind=Pod,reason=FailedMount"
#: The key of the :class:`Runtime` in kopf's memos.
MEMO_KEY = "kubetune_runtime"

# The kubernetes client's type hints want V1* models; plain dicts are accepted.
k8s: Any = kubernetes


@dataclass
class Runtime:
    """The operator-wide state every pass shares."""

    config: OperatorConfig
    #: The kubernetes API client (a connection for each of :data:`WORKERS`).
    client: Any
    #: The metrics of this process (served on ``KUBETUNE_METRICS_PORT``).
    metrics: OperatorMetrics
    #: The open Optuna storages, by URL.
    storages: cluster.Storages
    #: The server of the metrics, when a port is set and could be bound.
    metrics_server: Any = None

    def core(self) -> Any:
        """The core API (pods, ConfigMaps, Secrets) over :attr:`client`."""
        return k8s.client.CoreV1Api(self.client)

    def close(self) -> None:
        """Release storage connections and the metrics port (tests start and stop the
        operator in one process)."""
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.storages.close()

    @classmethod
    def of(cls, memo: kopf.Memo) -> Runtime:
        """The runtime in ``memo`` (the operator's, or a copy of it a study's handlers get)."""
        runtime = memo.get(MEMO_KEY)
        if not isinstance(runtime, cls):
            raise RuntimeError("the operator did not start: no runtime in its memo")
        return runtime


def start(config: OperatorConfig) -> Runtime:
    """The runtime of an operator that starts with ``config``."""
    # Heartbeats and fail_stale_trials are "experimental" in Optuna; kubetune relies on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    server = None
    if config.metrics_port is not None:
        server = start_metrics_server(config.metrics_port)
    return Runtime(
        config=config,
        client=cluster.api_client(connections=WORKERS),
        metrics=process_metrics(),
        storages=cluster.Storages(),
        metrics_server=server,
    )


def configure(settings: kopf.OperatorSettings) -> None:
    """Every kopf setting of the operator in one place."""
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping out of the user-facing status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = OPERATOR_NAME
    settings.peering.standalone = True
    settings.watching.server_timeout = 60
    # The pod cache holds the studies' pods only: the API server filters the watch.
    settings.watching.label_selectors["pods"] = STUDY_LABEL
    settings.watching.field_selectors[EVENTS] = MOUNT_EVENTS_SELECTOR
    settings.execution.max_workers = WORKERS
    settings.networking.request_timeout = 30
