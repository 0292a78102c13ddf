"""The operator's reads and writes: the Kubernetes API and the studies' Optuna storages.

Kept apart from :mod:`hpo_operator.handlers` so the handlers read as "gather, decide, act".
Nothing here decides anything: :func:`sizing_input` only combines what was read.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import kubernetes
import optuna
from hpo_operator.reconcile import ObservedPod, SizingInput, observe_pod
from hpo_operator.sizing import NodeInfo, Peak, choose_resource, estimate_key, resolve_peak
from hpo_operator.status import StudyStatus
from kubernetes.client.exceptions import ApiException
from optuna.storages import BaseStorage

from trial_runner.contract import COMPONENT_ESTIMATE, STUDY_LABEL
from trial_runner.preemption import release_stale_trials
from trial_runner.progress import StudyProgress
from trial_runner.spec import StudySpec
from trial_runner.storage import GRACE_PERIOD, ensure_study, open_storage, read_progress
from trial_runner.warmstart import WarmStartReport, apply_warm_start

__all__ = [
    "StorageMissing",
    "Storages",
    "api_client",
    "create",
    "create_or_replace",
    "delete_pod",
    "list_pods",
    "read_secret",
    "sizing_input",
]

# The kubernetes client's type hints want V1* models; plain dicts are accepted.
k8s: Any = kubernetes


class StorageMissing(Exception):
    """No storage URL can be found for a study; the message says where it was looked for."""


def api_client() -> Any:
    """A kubernetes client: the service account in a pod, else ``$KUBECONFIG`` as it is now."""
    try:
        configuration = k8s.client.Configuration()
        k8s.config.load_incluster_config(client_configuration=configuration)
        return k8s.client.ApiClient(configuration)
    except k8s.config.ConfigException:
        return k8s.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


def read_secret(core: Any, namespace: str, name: str, key: str) -> str:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise StorageMissing(f"Secret {namespace}/{name} not found") from None
        raise
    data = secret.data or {}
    if key not in data:
        raise StorageMissing(
            f"Secret {namespace}/{name} has no key {key!r} (keys: {', '.join(sorted(data))})"
        )
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


def list_pods(core: Any, client: Any, name: str, namespace: str) -> list[ObservedPod]:
    """The study's pods (by the study label), as the decision sees them."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{STUDY_LABEL}={name}")
    return [observe_pod(client.sanitize_for_serialization(p)) for p in pods.items]


def sizing_input(
    spec: StudySpec,
    status: StudyStatus,
    children: Sequence[ObservedPod],
    list_nodes: Callable[[], list[NodeInfo]],
) -> SizingInput:
    """The sizing for :func:`~hpo_operator.reconcile.decide`: from the spec, the recorded
    estimate or this spec's estimate pod, then the nodes (listed only when a peak is known)."""
    key = estimate_key(spec)
    message: str | None = None
    failed: str | None = None
    for pod in children:
        if pod.component != COMPONENT_ESTIMATE or pod.estimate_key != key or pod.deleting:
            continue
        if pod.phase == "Succeeded":
            message = pod.message
        elif pod.phase == "Failed":
            detail = pod.message.splitlines()[-1] if pod.message else "no termination message"
            failed = (
                f"estimate pod exited with code {pod.exit_code}: {detail[:500]}; fix the task "
                "or set spec.resources.peakMemory"
            )
    peak = resolve_peak(spec, status.sizing, message, failed)
    if not isinstance(peak, Peak):
        return peak
    recorded = status.sizing
    floor = (recorded.floor_bytes if recorded is not None else None) or 0
    limit = recorded.trials_per_device_limit if recorded is not None else None
    return choose_resource(list_nodes(), spec, peak, floor, limit)


class Storages:
    """Open Optuna storages by URL, the generation whose budget each study has written, and
    what each study's warm start did.

    Opening a storage can take as long as the database's connect timeout (an unreachable
    host), so each URL is opened under a lock of its own: one bad URL holds up the passes of
    the studies that use it, never another study's. Calls fail at once when the storage is
    unreachable (``patience=0``): the pass reports ``StorageUnavailable`` and the next asks again.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()  # the dictionaries only; never held across I/O
        self._opening: dict[str, threading.Lock] = {}
        self._storages: dict[str, BaseStorage] = {}
        self._ensured: dict[str, int] = {}
        self._warm_starts: dict[str, WarmStartReport | None] = {}

    def get(self, url: str) -> BaseStorage:
        with self._guard:
            storage = self._storages.get(url)
            opening = self._opening.setdefault(url, threading.Lock())
        if storage is not None:
            return storage
        with opening:
            with self._guard:
                storage = self._storages.get(url)
            if storage is None:
                # Heartbeats on: the operator preempts the trials of runners that died (and
                # re-queues them) even when no runner is left to notice.
                storage = open_storage(url, heartbeat=True, patience=0)
                with self._guard:
                    self._storages[url] = storage
            return storage

    def progress(
        self,
        url: str,
        uid: str,
        generation: int,
        study_name: str,
        spec: StudySpec,
        warm_start_source: str | None = None,
    ) -> tuple[StudyProgress, WarmStartReport | None]:
        """The study's progress and what its warm start did; creates the study, or writes an
        edited budget, and applies the warm start (once for good, see
        :mod:`trial_runner.warmstart`), once per generation. ``warm_start_source`` is the
        Optuna study ``spec.warmStart.fromStudy`` names."""
        storage = self.get(url)
        if self._ensured.get(uid) != generation:
            study = ensure_study(storage, study_name, spec)
            self._warm_starts[uid] = apply_warm_start(study, spec, url, warm_start_source)
            self._ensured[uid] = generation
        else:
            study = optuna.load_study(study_name=study_name, storage=storage)
        release_stale_trials(study, GRACE_PERIOD)
        return read_progress(study, spec), self._warm_starts.get(uid)

    def forget(self, uid: str) -> None:
        self._ensured.pop(uid, None)
        self._warm_starts.pop(uid, None)

    def close(self) -> None:
        """Release the connections (tests start and stop the operator in one process)."""
        with self._guard:
            storages = list(self._storages.values())
            self._storages.clear()
        for storage in storages:
            engine = getattr(storage, "engine", None)
            if engine is not None:
                engine.dispose()
        self._ensured.clear()
        self._warm_starts.clear()
