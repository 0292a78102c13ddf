"""One pass over a study, and its deletion: observe, decide, act, write the status.

Every pass is the same idempotent reconcile, run on create, resume, spec update and every
reconcile interval. The spec is validated once per pass and the storage URL found once; a
pass writes the status only when it changed. What the operator keeps about a study between
passes (:class:`~hpo_operator.reconcile.state.StudyState`) lives in the study's kopf memo and
goes with it; what it keeps for every study (:class:`~hpo_operator.runtime.Runtime`) in the
operator's memo.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import kopf
import optuna
from hpo_operator.metrics import OperatorMetrics
from hpo_operator.names import optuna_study_name
from hpo_operator.reconcile import gather
from hpo_operator.reconcile._decide import decide, invalid_spec
from hpo_operator.reconcile._plan import EventReason, Plan
from hpo_operator.reconcile._sizing import sizing_input
from hpo_operator.reconcile._storage import StorageMissing
from hpo_operator.reconcile.act import apply, delete_pods, patch_status
from hpo_operator.reconcile.state import (
    ALL_NODES,
    Indexes,
    Logger,
    PodIndex,
    StudyState,
    snapshot,
)
from hpo_operator.runtime import Runtime
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune_api.spec import SpecError, StudySpec, validate_spec_mapping
from kubetune_api.status import StudyStatus
from kubetune_study.storage import StorageError

__all__ = ["delete_study", "reconcile_study"]

# Repeated per-pass warnings go here rather than to kopf's object logger, which would post
# each of them as a Kubernetes Event (the decision posts one when the condition changes).
log = logging.getLogger("kubetune.operator")


def reconcile_study(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: Logger,
    runtime: Runtime,
    state: StudyState,
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
    if not state.lock.acquire(blocking=wait):
        return
    try:
        with _measured(runtime.metrics, namespace, name):
            current: Mapping[str, Any] = body.get("status") or {}
            core = runtime.core()
            status = _read_status(_decided_on(body, current, state), logger)
            spec, plan, secret_ref = _decide(core, body, status, runtime, state, indexes)
            plan.status.study_name = optuna_study_name(namespace, name)
            apply(core, body, spec, plan, secret_ref, runtime.config, logger, state)
            new_status = plan.status.to_api()
            patch_status(patch, current, new_status)
            state.written = (str(meta.get("resourceVersion")), new_status)
            runtime.metrics.observe(namespace, name, plan.status)
            for event in plan.events:
                kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    finally:
        state.lock.release()


@contextlib.contextmanager
def _measured(metrics: OperatorMetrics, namespace: str, name: str) -> Iterator[None]:
    """Time a pass, and count it when it raises (with the HTTP status the API answered)."""
    try:
        with metrics.reconcile_duration.time():
            yield
    except ApiException as error:
        metrics.reconcile_error(namespace, name, api_status=error.status)
        raise
    except Exception:
        metrics.reconcile_error(namespace, name)
        raise


def _decided_on(
    body: Mapping[str, Any], current: Mapping[str, Any], state: StudyState
) -> Mapping[str, Any]:
    """The status to decide from: the body's, unless our last status patch is not in this
    body yet (a timer and a change handler ran back to back): then what was written."""
    version, written = state.written
    return written if version == body["metadata"].get("resourceVersion") else current


def _decide(
    core: Any,
    body: Mapping[str, Any],
    status: StudyStatus,
    runtime: Runtime,
    state: StudyState,
    indexes: Indexes,
) -> tuple[StudySpec | None, Plan, tuple[str, str] | None]:
    """The spec (validated once: ``None`` when it does not validate), the plan, and where
    runner pods read the storage URL from."""
    try:
        spec = validate_spec_mapping(dict(body.get("spec") or {}))
    except SpecError as error:
        return None, invalid_spec(status, _generation(body), error, _now()), None
    plan, secret_ref = _plan(core, body, spec, status, runtime, state, indexes)
    return spec, plan, secret_ref


def _plan(
    core: Any,
    body: Mapping[str, Any],
    spec: StudySpec,
    status: StudyStatus,
    runtime: Runtime,
    state: StudyState,
    indexes: Indexes,
) -> tuple[Plan, tuple[str, str] | None]:
    """The plan for a valid spec, and where runner pods read the storage URL from."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = _generation(body)
    config = runtime.config
    now = _now()
    read = gather.progress(core, body, spec, state, generation, config, runtime.storages)
    if read.error:
        study_name = optuna_study_name(namespace, name)
        log.warning("study %s: storage unavailable: %s", study_name, read.error)
        runtime.metrics.storage_error(namespace, name)
    children = gather.children(body, state, indexes)
    list_nodes = partial(snapshot, indexes.nodes, ALL_NODES)
    plan = decide(
        spec,
        status,
        generation,
        children,
        read.progress,
        sizing_input(spec, status, children, list_nodes),
        now,
        storage_error=read.error,
        max_runner_failures=config.max_runner_failures,
        start_policy=config.runner_start,
        warm_start=read.warm_start,
    )
    return plan, read.secret_ref


def _read_status(raw: Mapping[str, Any], logger: Logger) -> StudyStatus:
    try:
        return StudyStatus.from_api(raw)
    except ValidationError as error:  # written by hand or by another version: start over
        logger.warning("the study's status is not one kubetune wrote; ignoring it: %s", error)
        return StudyStatus()


def _generation(body: Mapping[str, Any]) -> int:
    return int(body["metadata"].get("generation") or 1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def delete_study(
    body: kopf.Body, logger: Logger, runtime: Runtime, state: StudyState, pods: PodIndex
) -> None:
    """Stop the runners; delete the Optuna study only with ``deletionPolicy: Delete``.

    Raises:
        kopf.TemporaryError: pods are still stopping (kopf calls again).
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    core = runtime.core()
    children = state.pods.children(snapshot(pods, (namespace, name)), time.monotonic())
    delete_pods(core, namespace, [pod.name for pod in children if not pod.deleting], state)
    if children:
        raise kopf.TemporaryError(f"waiting for {len(children)} pod(s) to stop", delay=2)
    runtime.metrics.forget(namespace, name)
    try:
        spec = validate_spec_mapping(dict(body.get("spec") or {}))
    except SpecError:
        return
    study_name = optuna_study_name(namespace, name)
    if spec.storage.deletion_policy != "Delete":
        logger.info("keeping Optuna study %s (deletionPolicy Retain)", study_name)
        return
    try:
        url, _ref = gather.storage_url(core, body, spec, state, runtime.config, write_secret=False)
        optuna.delete_study(study_name=study_name, storage=runtime.storages.get(url))
    except KeyError:
        return  # the study was never created
    except (StorageError, StorageMissing, ApiException) as error:
        # Do not hold the HPOStudy forever for a storage that is gone; say so instead.
        message = f"could not delete Optuna study {study_name}: {gather.first_line(error)}"
        kopf.warn(body, reason=EventReason.STUDY_NOT_DELETED, message=message)
        return
    kopf.info(body, reason=EventReason.STUDY_DELETED, message=f"deleted Optuna study {study_name}")
