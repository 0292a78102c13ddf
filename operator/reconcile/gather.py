"""What a pass reads: the study's storage URL (from a Secret, cached), its progress and warm
start from the storage, and its pods from the watch-fed caches.

The study's pods and the cluster's nodes come from caches that watches keep (see
:mod:`hpo_operator.handlers`), so a pass in steady state makes no list call; a storage Secret is
read again at most every :data:`SECRET_REFRESH` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from hpo_operator import _cluster as cluster
from hpo_operator.config import (
    DEFAULT_STORAGE_SECRET_ENV,
    OperatorConfig,
)
from hpo_operator.names import optuna_study_name, storage_secret_name
from hpo_operator.reconcile._observe import ObservedPod, with_mount_failure
from hpo_operator.reconcile._storage import StorageMissing
from hpo_operator.reconcile.act import write_spec_configmap, write_storage_secret
from hpo_operator.reconcile.state import Indexes, StudyState, snapshot

from kubetune_api.contract import STORAGE_ENV, STORAGE_SECRET_KEY
from kubetune_api.spec import StudySpec
from kubetune_study.progress import StudyProgress
from kubetune_study.storage import StorageError, redact
from kubetune_study.warmstart import WarmStartReport, source_study_name

__all__ = ["SECRET_REFRESH", "Progress", "children", "first_line", "progress", "storage_url"]

#: Seconds a storage URL read from a Secret is used before the Secret is read again (it is
#: also read again after the storage could not be reached).
SECRET_REFRESH = 60.0


@dataclass(frozen=True)
class Progress:
    """The study as its storage shows it, or why the storage cannot be read (never with the
    URL in it); and the ``(secret, key)`` runner pods read the storage URL from."""

    progress: StudyProgress | None = None
    warm_start: WarmStartReport | None = None
    error: str | None = None
    secret_ref: tuple[str, str] | None = None


def progress(
    core: Any,
    body: Mapping[str, Any],
    spec: StudySpec,
    state: StudyState,
    generation: int,
    config: OperatorConfig,
    storages: cluster.Storages,
) -> Progress:
    """The study's progress and its warm start's report (the study created, or its edited
    budget written, first); the ``<study>-spec`` ConfigMap is written on the way."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    name = optuna_study_name(namespace, meta["name"])
    # fromStudy.hpoStudy names an HPOStudy of this namespace, whose Optuna study is named so.
    source = source_study_name(spec, partial(optuna_study_name, namespace))
    try:
        url, secret_ref = storage_url(core, body, spec, state, config)
        write_spec_configmap(core, body, spec, state)
        read, warm_start = state.storage.progress(storages, url, generation, name, spec, source)
        return Progress(read, warm_start, None, secret_ref)
    except (StorageError, StorageMissing) as error:
        state.secret_url = None  # the Secret may name another storage now
        return Progress(error=str(error))
    except Exception as error:  # sqlalchemy/psycopg2 raise many kinds
        state.secret_url = None
        return Progress(error=f"{type(error).__name__}: {first_line(error)}")


def children(body: Mapping[str, Any], state: StudyState, indexes: Indexes) -> list[ObservedPod]:
    """The study's pods as the decision sees them: the cached ones with what their
    ``FailedMount`` events say, and those the cache does not show yet (:class:`StudyState`)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    cached = snapshot(indexes.pods, (namespace, meta["name"]))
    return [
        with_mount_failure(pod, snapshot(indexes.mounts, (namespace, pod.uid)))
        for pod in state.pods.children(cached, time.monotonic())
    ]


def first_line(error: BaseException) -> str:
    """The first line of ``error``, without credentials."""
    text = str(error).strip().splitlines()
    return redact(text[0]) if text else ""


def storage_url(
    core: Any,
    body: Mapping[str, Any],
    spec: StudySpec,
    state: StudyState,
    config: OperatorConfig,
    *,
    write_secret: bool = True,
) -> tuple[str, tuple[str, str]]:
    """The storage URL and the ``(secret, key)`` runner pods read it from.

    A URL read from a Secret is used for :data:`SECRET_REFRESH` seconds (until then an edited
    Secret is seen only once its old storage fails). With the operator's own
    ``KUBETUNE_STORAGE_URL``, the Secret ``<study>-storage`` is written for the pods (once per
    process and study, unless ``write_secret`` is false).

    Raises:
        StorageMissing: neither the study nor the operator names a storage, or the Secret named
            (or its key) does not exist.
    """
    meta = body["metadata"]
    ref = spec.storage.secret_ref
    secret = (ref.name, ref.key) if ref is not None else config.default_storage_secret
    if secret is not None:
        cached = state.secret_url
        now = time.monotonic()
        if cached is not None and cached[0] == secret and now - cached[2] < SECRET_REFRESH:
            return cached[1], secret
        read = cluster.read_secret(core, meta["namespace"], *secret)
        state.secret_url = (secret, read, now)
        return read, secret
    url = config.default_storage_url
    if url:
        if write_secret:
            write_storage_secret(core, body, url, state)
        return url, (storage_secret_name(meta["name"]), STORAGE_SECRET_KEY)
    raise StorageMissing.not_configured(DEFAULT_STORAGE_SECRET_ENV, STORAGE_ENV)
