"""The names of a study's children and its Optuna study, and reading them back (pure).

Every child has a deterministic name derived from the study, so "already exists" means
"already done" after an operator restart. :mod:`hpo_operator.manifests` and
:mod:`hpo_operator.pods` build the children under these names; the reconcile pass reads them
back from the pods it observes.
"""

from __future__ import annotations

__all__ = [
    "best_configmap_name",
    "estimate_pod_name",
    "optuna_study_name",
    "runner_index",
    "runner_pod_name",
    "spec_configmap_name",
    "storage_secret_name",
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
