"""The operator's reads and writes: the Kubernetes API and the studies' Optuna storages.

Kept apart from the reconcile pass (:mod:`hpo_operator.reconcile`) so that it reads as
"gather, decide, act". Nothing here decides anything or composes what the status says: the
messages of :class:`~hpo_operator.reconcile.StorageMissing` are composed on the pure side.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import optuna
from hpo_operator.reconcile import StorageMissing
from kubernetes.client.exceptions import ApiException
from optuna.storages import BaseStorage

from kubetune_api.spec import StudySpec
from kubetune_study.outage import first_line, is_connection_error
from kubetune_study.preemption import release_stale_trials
from kubetune_study.progress import StudyProgress
from kubetune_study.storage import (
    StorageError,
    claim_lock,
    ensure_study,
    grace_period,
    open_storage,
    read_progress,
    redact,
)
from kubetune_study.warmstart import WarmStartReport, apply_warm_start

__all__ = [
    "Storages",
    "StudyStorage",
    "api_client",
    "create",
    "create_or_replace",
    "delete_pod",
    "read_secret",
]

# The kubernetes client's type hints want V1* models; plain dicts are accepted.
k8s: Any = kubernetes

#: Seconds a pass waits for another pass that is opening the same storage.
OPEN_WAIT = 5.0


def api_client(connections: int = 1) -> Any:
    """A kubernetes client: the service account in a pod, else ``$KUBECONFIG`` as it is now.

    It keeps up to ``connections`` connections to the API server open (at least the client's
    default): one per thread that uses it at once. A smaller pool than that drops a connection
    after each burst of requests and opens (and TLS-handshakes) a new one for the next.
    """
    configuration = k8s.client.Configuration()
    try:
        k8s.config.load_incluster_config(client_configuration=configuration)
    except k8s.config.ConfigException:
        k8s.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, connections)
    return k8s.client.ApiClient(configuration)


def read_secret(core: Any, namespace: str, name: str, key: str) -> str:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise StorageMissing.secret_not_found(namespace, name) from None
        raise
    data = secret.data or {}
    if key not in data:
        raise StorageMissing.key_not_found(namespace, name, key, data)
    return base64.b64decode(data[key]).decode().strip()


def create(create_call: Callable[[], Any]) -> None:
    """Create; "already exists" means a pass before a restart (or a racing one) did it."""
    try:
        create_call()
    except ApiException as error:
        if error.status != 409:
            raise


def create_or_replace(create_call: Callable[[], Any], replace_call: Callable[[], Any]) -> None:
    try:
        create_call()
    except ApiException as error:
        if error.status != 409:
            raise
        replace_call()


def delete_pod(core: Any, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise


class Storages:
    """The operator's open Optuna storages, by URL, shared by every study's passes.

    A storage that cannot be reached must cost one worker thread, not every study's pass:

    * opening a storage (up to the database's connect timeout for an unreachable host) is done
      by one pass at a time per URL; the others wait for it at most :data:`OPEN_WAIT` seconds;
    * once a call on a URL has failed to reach its database, one pass at a time tries that URL
      again (:meth:`session` holds its probe lock); the passes of the other studies on it fail
      at once with the last error until a try succeeds.

    No lock is held across I/O except a URL's own probe lock, which only the passes of studies
    on that URL ever wait for, and those for at most :data:`OPEN_WAIT` seconds.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()  # the dictionary only; never held across I/O
        self._endpoints: dict[str, _Endpoint] = {}

    def _endpoint(self, url: str) -> _Endpoint:
        with self._guard:
            return self._endpoints.setdefault(url, _Endpoint())

    @contextlib.contextmanager
    def session(self, url: str) -> Iterator[BaseStorage]:
        """The storage of ``url``, for the calls of one pass (see the class docstring).

        Raises:
            StorageError: the storage cannot be opened, or another pass is trying a URL whose
                database could not be reached (with that error).
        """
        endpoint = self._endpoint(url)
        failure = endpoint.failure
        exclusive = endpoint.storage is None or failure is not None
        if exclusive and not endpoint.probe.acquire(timeout=0.0 if failure else OPEN_WAIT):
            raise StorageError(failure or f"still connecting to {redact(url)}")
        try:
            if endpoint.storage is None:
                # Heartbeats on: the operator preempts the trials of runners that died (and
                # re-queues them) even when no runner is left to notice.
                endpoint.storage = open_storage(url, heartbeat=True, patience=0)
            yield endpoint.storage
        except StorageError as error:
            endpoint.failure = str(error)
            raise
        except Exception as error:
            if is_connection_error(error):
                endpoint.failure = f"cannot reach storage {redact(url)}: {first_line(error)}"
            raise
        else:
            endpoint.failure = None
        finally:
            if exclusive:
                endpoint.probe.release()

    def get(self, url: str) -> BaseStorage:
        """The storage of ``url`` (opened if needed), for a single call outside a pass."""
        with self.session(url) as storage:
            return storage

    def close(self) -> None:
        """Release the connections (tests start and stop the operator in one process)."""
        with self._guard:
            endpoints = list(self._endpoints.values())
            self._endpoints.clear()
        for endpoint in endpoints:
            engine = getattr(endpoint.storage, "engine", None)
            if engine is not None:
                engine.dispose()


@dataclass
class _Endpoint:
    storage: BaseStorage | None = None
    #: Why the last call could not reach the database (None: it could).
    failure: str | None = None
    #: Held by the pass that opens the storage, or tries it again after a failure.
    probe: threading.Lock = field(default_factory=threading.Lock)


class StudyStorage:
    """One study's handle on its Optuna study, kept between passes (in the study's memo).

    The study is created, its budget written and its warm start applied once per generation
    and storage URL; later passes reuse the loaded study (no lookup by name per pass), fail
    the trials of runners that died and read the progress.
    """

    def __init__(self) -> None:
        self._study: optuna.Study | None = None
        self._key: tuple[str, int] | None = None
        self._warm_start: WarmStartReport | None = None

    def progress(
        self,
        storages: Storages,
        url: str,
        generation: int,
        study_name: str,
        spec: StudySpec,
        warm_start_source: str | None = None,
    ) -> tuple[StudyProgress, WarmStartReport | None]:
        """The study's progress and what its warm start did; creates the study, or writes an
        edited budget, and applies the warm start (once for good, see
        :mod:`kubetune_study.warmstart`), once per generation. ``warm_start_source`` is the
        Optuna study ``spec.warmStart.fromStudy`` names."""
        with storages.session(url) as storage:
            try:
                study = self._study
                if study is None or self._key != (url, generation):
                    study = ensure_study(storage, study_name, spec)
                    self._warm_start = apply_warm_start(study, spec, url, warm_start_source)
                    self._study, self._key = study, (url, generation)
                # The lock connects only when there are stale trials to queue again.
                with contextlib.closing(claim_lock(url, study_name)) as lock:
                    release_stale_trials(study, grace_period(), lock)
                return read_progress(study, spec), self._warm_start
            except BaseException:
                # Whatever went wrong (the study deleted under us, an outage), start over.
                self._study = self._key = None
                raise
