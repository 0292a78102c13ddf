"""Helpers shared by every test layer: the one study builder, the one wait, ``IN_CI``, the one
search for a leaked secret."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from kubetune_api.spec import HPOStudy, StudySpec, study_from_mapping

__all__ = [
    "IN_CI",
    "secret_leaks",
    "spec_model",
    "study_document",
    "study_model",
    "wait_until",
]

T = TypeVar("T")

#: Under ``CI=true`` a missing PostgreSQL or control plane fails the tests; it never skips them.
IN_CI = os.environ.get("CI", "").lower() == "true"

_BASE_SPEC: dict[str, Any] = {
    "objective": {"metric": "accuracy", "direction": "Maximize"},
    "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP", "config": {"a": 1}},
    "searchSpace": [
        {
            "name": "learning_rate",
            "type": "Float",
            "low": "1e-4",
            "high": "1e-1",
            "scale": "Log",
            "group": "Critical",
        },
        {"name": "batch_size", "type": "Categorical", "choices": [32, 64], "group": "Critical"},
        {
            "name": "hidden_size",
            "type": "Int",
            "low": 16,
            "high": 128,
            "group": "Model",
            "default": 64,
        },
    ],
    "stages": [{"groups": ["Critical"], "trials": 4}, {"groups": ["Critical", "Model"]}],
    "budget": {"maxTrials": 10, "maxFailedTrials": 2, "timeout": "1h30m"},
}


def study_document(name: str = "digits", **spec: Any) -> dict[str, Any]:
    """A valid HPOStudy document (the digits task, two stages); keyword arguments replace
    top-level spec fields (``None`` removes one)."""
    merged = {**copy.deepcopy(_BASE_SPEC), **copy.deepcopy(spec)}
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": name},
        "spec": {key: value for key, value in merged.items() if value is not None},
    }


def study_model(name: str = "digits", **spec: Any) -> HPOStudy:
    """:func:`study_document`, validated."""
    return study_from_mapping(study_document(name, **spec))


def small_runner_study(
    name: str, entrypoint: str, max_trials: int, training: dict[str, Any] | None = None
) -> HPOStudy:
    """A one-stage TPE study of two parameters and one-epoch trials, for runner tests."""
    return study_model(
        name,
        task={"entrypoint": entrypoint},
        searchSpace=[
            {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2",
             "scale": "Log"},
            {"name": "hidden_size", "type": "Int", "low": 16, "high": 32},
        ],
        stages=None,
        budget={"maxTrials": max_trials},
        sampler={"type": "TPE", "seed": 0},
        training={"epochs": 1, **(training or {})},
    )  # fmt: skip


def spec_model(**spec: Any) -> StudySpec:
    """The validated spec of :func:`study_document`."""
    return study_model(**spec).spec


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.5,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    After ``timeout`` seconds the test fails naming ``what``, the last value and, when given,
    what ``diagnose()`` says.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}"
                + details
            )
        time.sleep(interval)


def secret_leaks(secret: str, sources: Mapping[str, str], context: int = 60) -> list[str]:
    """Where ``secret`` appears in ``sources`` (name -> text), as written, percent-encoded (in a
    URL) or JSON-escaped: one ``"name: ...text around it..."`` per hit, for a failure message."""
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    found = []
    for name, text in sources.items():
        for form in sorted(forms):
            at = text.find(form)
            if at >= 0:
                around = text[max(at - context, 0) : at + len(form) + context]
                found.append(f"{name}: ...{around}...")
    return found
