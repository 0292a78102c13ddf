"""What a pass writes: the plan's actions (pods created and deleted, the best trial's or the
Pareto front's ConfigMap), the ``<study>-spec`` ConfigMap, the default-storage Secret and the
status patch. Every write is idempotent: children have deterministic names, so "already
exists" means "already done"."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import kopf
from hpo_operator import _cluster as cluster
from hpo_operator.config import OperatorConfig
from hpo_operator.manifests import (
    best_configmap,
    front_configmap,
    spec_configmap,
    storage_secret,
    without_nulls,
)
from hpo_operator.pods import estimate_pod, runner_pod
from hpo_operator.reconcile._observe import observe_pod
from hpo_operator.reconcile._plan import (
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    Plan,
    WriteBest,
    WriteFront,
)
from hpo_operator.reconcile.state import Logger, StudyState

from kubetune_api.contract import STUDY_KEY
from kubetune_api.spec import StudySpec

__all__ = ["apply", "delete_pods", "patch_status", "write_spec_configmap", "write_storage_secret"]


def apply(
    core: Any,
    body: Mapping[str, Any],
    spec: StudySpec | None,
    plan: Plan,
    secret_ref: tuple[str, str] | None,
    config: OperatorConfig,
    logger: Logger,
    state: StudyState,
) -> None:
    """Carry out ``plan``'s actions, in order. ``spec`` is the validated spec (``None`` when it
    does not validate: the plan then has no action); runner pods read the storage URL from
    ``secret_ref``, the one the pass read the progress with."""
    namespace = body["metadata"]["namespace"]
    for action in plan.actions:
        if isinstance(action, DeletePod):
            logger.info("deleting pod %s: %s", action.name, action.reason)
            delete_pods(core, namespace, [action.name], state)
            continue
        if spec is None:
            raise ValueError(f"{type(action).__name__} for a study whose spec does not validate")
        if isinstance(action, CreateRunner):
            if secret_ref is None:
                raise ValueError("runners to create for a study whose storage was not found")
            pod = runner_pod(body, spec, action.index, action.sizing, secret_ref, config)
            _create_pod(core, namespace, pod, state)
        elif isinstance(action, CreateEstimatePod):
            _create_pod(core, namespace, estimate_pod(body, spec, action.key, config), state)
        elif isinstance(action, WriteBest):
            configmap = best_configmap(body, spec, action.value, action.params, action.trial)
            _write_configmap(core, namespace, configmap)
        elif isinstance(action, WriteFront):
            _write_configmap(core, namespace, front_configmap(body, spec, action.front))


def delete_pods(core: Any, namespace: str, names: list[str], state: StudyState) -> None:
    """Delete the pods named (gone already is fine), and expect the cache to show it."""
    for name in names:
        cluster.delete_pod(core, namespace, name)
    state.pods.deleted(names, time.monotonic())


def _create_pod(core: Any, namespace: str, pod: dict[str, Any], state: StudyState) -> None:
    cluster.create(partial(core.create_namespaced_pod, namespace, pod))
    state.pods.created(observe_pod(pod), time.monotonic())


def _write_configmap(core: Any, namespace: str, configmap: dict[str, Any]) -> None:
    cluster.create_or_replace(
        partial(core.create_namespaced_config_map, namespace, configmap),
        partial(
            core.replace_namespaced_config_map, configmap["metadata"]["name"], namespace, configmap
        ),
    )


def write_spec_configmap(
    core: Any, body: Mapping[str, Any], spec: StudySpec, state: StudyState
) -> None:
    """The ``<study>-spec`` ConfigMap the pods read the study from, when it changed."""
    configmap = spec_configmap(body, spec)
    content = configmap["data"][STUDY_KEY]
    if state.spec_written == content:
        return
    _write_configmap(core, body["metadata"]["namespace"], configmap)
    state.spec_written = content


def write_storage_secret(core: Any, body: Mapping[str, Any], url: str, state: StudyState) -> None:
    """The ``<study>-storage`` Secret with the operator's own storage URL (once per process and
    study, and again when the URL changed)."""
    if state.secret_written == url:
        return
    namespace = body["metadata"]["namespace"]
    document = storage_secret(body, url)
    cluster.create_or_replace(
        partial(core.create_namespaced_secret, namespace, document),
        partial(core.replace_namespaced_secret, document["metadata"]["name"], namespace, document),
    )
    state.secret_written = url


def patch_status(patch: kopf.Patch, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Write ``new`` as the status; nested keys that disappeared are removed (merge patch), at
    every depth (the best trial's parameters: a conditional parameter of the old best that the
    new best lacks). Fields that did not change are left out, so a pass that changed nothing
    writes nothing. A merge patch's ``null`` removes a key, so a field ``None`` in ``new`` and
    absent in ``old`` is unchanged."""
    for key, value in new.items():
        previous = old.get(key)
        if without_nulls(value) == without_nulls(previous):
            continue
        patch.status[key] = _removing(value, previous)


def _removing(value: Any, previous: Any) -> Any:
    """``value`` as a merge patch over ``previous``: a key of a mapping in ``previous`` that
    ``value`` lacks is ``None`` (removed), in nested mappings too. Lists are replaced whole."""
    if not isinstance(value, dict) or not isinstance(previous, Mapping):
        return value
    removed: dict[str, Any] = {k: None for k in previous if k not in value}
    return {**removed, **{k: _removing(v, previous.get(k)) for k, v in value.items()}}
