"""Manifests of the objects the operator creates for a study besides its pods (pure: dicts in,
dicts out): the ConfigMaps of the study document and of the best trial or Pareto front, and the
storage Secret; and what every child carries, its labels and an owner reference to the study.

Every child has a deterministic name (:mod:`hpo_operator.names`) and an owner reference to the
study, so the garbage collector removes what the finalizer misses. The pods are built by
:mod:`hpo_operator.pods`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hpo_operator.names import (
    best_configmap_name,
    spec_configmap_name,
    storage_secret_name,
)

from kubetune_api.contract import (
    API_VERSION,
    APP_NAME,
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    KIND,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OPERATOR_NAME,
    STORAGE_SECRET_KEY,
    STUDY_KEY,
    STUDY_LABEL,
)
from kubetune_api.spec import StudySpec, dump_yaml
from kubetune_study.pareto import ParetoPoint, front_document

__all__ = [
    "FRONT_CONFIGMAP_LIMIT",
    "best_configmap",
    "child_metadata",
    "front_configmap",
    "owner_reference",
    "spec_configmap",
    "storage_secret",
    "study_document",
    "without_nulls",
]


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
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: study,
        MANAGED_BY_LABEL: OPERATOR_NAME,
        COMPONENT_LABEL: component,
        STUDY_LABEL: study,
    }


def child_metadata(
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
        "metadata": child_metadata(owner, spec_configmap_name(meta["name"]), "study-spec"),
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
        "metadata": child_metadata(owner, best_configmap_name(meta["name"]), "best-params"),
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
        "metadata": child_metadata(owner, best_configmap_name(meta["name"]), "best-params"),
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
        "metadata": child_metadata(
            owner, storage_secret_name(owner["metadata"]["name"]), "storage"
        ),
        "stringData": {STORAGE_SECRET_KEY: url},
    }


def without_nulls(value: Any) -> Any:
    """``value`` without null fields, as the API server stores it (it prunes a template's, and
    a merge patch's ``null`` removes a field)."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value
