"""The one study builder of the tests and the benchmarks.

Every HPOStudy a test or a benchmark makes starts from :func:`study_document`: a valid study of
the digits task in two stages, whose top-level spec fields a caller replaces (``None`` removes
one). The rest are that document cut to a purpose: validated (:func:`study_model`,
:func:`spec_model`), a one-stage runner study (:func:`small_runner_study`), the integration
tests' small digits study (:func:`digits_study`), and the repository's CPU example cut down to
seconds for a cluster (:func:`small_cpu_study`). The parameter helpers (:func:`float_param`,
:func:`int_param`, :func:`categorical_param`) write search-space entries.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune_api.contract import API_VERSION, KIND
from kubetune_api.spec import HPOStudy, StudySpec, study_from_mapping
from tests.harness.helpers import REPO_ROOT

__all__ = [
    "DIGITS",
    "DIGITS_SPEC",
    "EXAMPLES",
    "categorical_param",
    "digits_study",
    "float_param",
    "int_param",
    "load_example",
    "mlp_search_space",
    "small_cpu_study",
    "small_runner_study",
    "spec_model",
    "study_document",
    "study_model",
]

EXAMPLES = REPO_ROOT / "examples"
#: The task of most studies: a small MLP on scikit-learn's digits, seconds per trial on a CPU.
DIGITS = "trial_runner.tasks.digits:DigitsMLP"


def float_param(
    name: str, low: str, high: str, *, log: bool = False, **more: Any
) -> dict[str, Any]:
    """A ``Float`` search-space entry (bounds as the strings a user writes; ``log``: Log scale)."""
    scale = {"scale": "Log"} if log else {}
    return {"name": name, "type": "Float", "low": low, "high": high, **scale, **more}


def int_param(name: str, low: int, high: int, **more: Any) -> dict[str, Any]:
    """An ``Int`` search-space entry (``step``, ``group``, ``default`` ... in ``more``)."""
    return {"name": name, "type": "Int", "low": low, "high": high, **more}


def categorical_param(name: str, choices: list[Any], **more: Any) -> dict[str, Any]:
    """A ``Categorical`` search-space entry."""
    return {"name": name, "type": "Categorical", "choices": choices, **more}


_BASE_SPEC: dict[str, Any] = {
    "objective": {"metric": "accuracy", "direction": "Maximize"},
    "task": {"entrypoint": DIGITS, "config": {"a": 1}},
    "searchSpace": [
        float_param("learning_rate", "1e-4", "1e-1", log=True, group="Critical"),
        categorical_param("batch_size", [32, 64], group="Critical"),
        int_param("hidden_size", 16, 128, group="Model", default=64),
    ],
    "stages": [{"groups": ["Critical"], "trials": 4}, {"groups": ["Critical", "Model"]}],
    "budget": {"maxTrials": 10, "maxFailedTrials": 2, "timeout": "1h30m"},
}


def study_document(name: str = "digits", **spec: Any) -> dict[str, Any]:
    """A valid HPOStudy document (the digits task, two stages); keyword arguments replace
    top-level spec fields (``None`` removes one)."""
    merged = {**copy.deepcopy(_BASE_SPEC), **copy.deepcopy(spec)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {key: value for key, value in merged.items() if value is not None},
    }


def study_model(name: str = "digits", **spec: Any) -> HPOStudy:
    """:func:`study_document`, validated."""
    return study_from_mapping(study_document(name, **spec))


def spec_model(**spec: Any) -> StudySpec:
    """The validated spec of :func:`study_document`."""
    return study_model(**spec).spec


def small_runner_study(
    name: str, entrypoint: str, max_trials: int, training: dict[str, Any] | None = None
) -> HPOStudy:
    """A one-stage TPE study of two parameters and one-epoch trials, for runner tests."""
    return study_model(
        name,
        task={"entrypoint": entrypoint},
        searchSpace=[
            float_param("learning_rate", "1e-3", "3e-2", log=True),
            int_param("hidden_size", 16, 32),
        ],
        stages=None,
        budget={"maxTrials": max_trials},
        sampler={"type": "TPE", "seed": 0},
        training={"epochs": 1, **(training or {})},
    )


def mlp_search_space(batch_sizes: list[int] | None = None) -> list[dict[str, Any]]:
    """The benchmarks' search space of the digits MLP: learning rate, batch size (when
    ``batch_sizes`` is given), hidden size and dropout, in that order (the order Optuna draws
    them in)."""
    return [
        float_param("learning_rate", "1e-4", "3e-2", log=True),
        *([categorical_param("batch_size", batch_sizes)] if batch_sizes else []),
        int_param("hidden_size", 32, 256, step=32),
        float_param("dropout", "0.0", "0.4"),
    ]


#: A small digits study (seconds per trial) for real runner processes; tests replace
#: top-level spec fields.
DIGITS_SPEC: dict[str, Any] = {
    "searchSpace": [
        float_param("learning_rate", "1e-3", "3e-2", log=True, group="Critical"),
        categorical_param("batch_size", [32, 64], group="Critical"),
        int_param("hidden_size", 16, 64, group="Model", default=32),
    ],
    "stages": None,
    "budget": {"maxTrials": 6},
    "sampler": {"type": "TPE", "seed": 0},
    "task": {"entrypoint": DIGITS},
    "training": {"epochs": 1},
}


def digits_study(name: str, **spec_changes: Any) -> dict[str, Any]:
    """:data:`DIGITS_SPEC` as a study document; keyword arguments replace top-level fields."""
    return study_document(name, **{**DIGITS_SPEC, **spec_changes})


def load_example(name: str) -> dict[str, Any]:
    """A study file of the repository's ``examples/``, as a document."""
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def small_cpu_study(
    name: str, max_trials: int = 6, parallelism: int = 2, epochs: int = 3
) -> dict[str, Any]:
    """The digits example cut down to seconds: no stages, 1 fold, a few epochs.

    Tests that act on a running study (delete a pod, suspend) give it more epochs so the
    study is still running when they act: warm trials of 3 epochs take well under a second.
    """
    study = load_example("digits-cpu.yaml")
    study["metadata"] = {"name": name}
    spec = study["spec"]
    spec["searchSpace"] = [
        {k: v for k, v in p.items() if k not in ("group", "default")} for p in spec["searchSpace"]
    ]
    spec.pop("stages", None)
    spec["budget"] = {"maxTrials": max_trials, "maxFailedTrials": 3}
    spec["pruner"] = {"type": "Nop"}
    spec["training"] = {"epochs": epochs, "folds": 1}
    spec["resources"]["parallelism"] = parallelism
    return study
