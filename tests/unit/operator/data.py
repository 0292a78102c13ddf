"""Plain data the operator's unit tests share (nothing is mocked)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hpo_operator.sizing import SizingDecision

from kubetune_api.spec import StudySpec
from kubetune_study.progress import StageSummary, StudyProgress
from tests.harness.studies import spec_model

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

OWNER: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "HPOStudy",
    "metadata": {"name": "digits", "namespace": "team-a", "uid": "0b5e-uid"},
}

#: A CPU study with two runners and a small budget; tests replace top-level fields.
OPERATOR_SPEC: dict[str, Any] = {
    "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP", "image": "img:1"},
    "searchSpace": [
        {"name": "learning_rate", "type": "Float", "low": "1e-4", "high": "1e-1", "scale": "Log"},
        {"name": "batch_size", "type": "Categorical", "choices": [32, 64]},
    ],
    "stages": None,
    "budget": {"maxTrials": 4},
    "resources": {"accelerator": "CPU", "parallelism": 2, "memory": "1Gi"},
}


def make_spec(**overrides: Any) -> StudySpec:
    return spec_model(**{**OPERATOR_SPEC, **overrides})


def make_progress(
    complete: int = 0,
    pruned: int = 0,
    failed: int = 0,
    running: int = 0,
    waiting: int = 0,
    max_trials: int = 4,
    best: tuple[float, int] | None = None,
    outcome: str = "Running",
    stage: int = 0,
    failure: str | None = None,
) -> StudyProgress:
    value, trial = best if best else (None, None)
    params = {"learning_rate": 0.01, "batch_size": 64} if best else None
    return StudyProgress(
        complete=complete,
        pruned=pruned,
        failed=failed,
        running=running,
        waiting=waiting,
        max_trials=max_trials,
        best_value=value,
        best_params=params,
        best_trial=trial,
        current_stage=stage,
        stages=(
            StageSummary(0, max_trials, complete, pruned, running + waiting, value, params, trial),
        ),
        outcome=outcome,  # type: ignore[arg-type]
        elapsed_seconds=1.0,
        failure=failure,
    )


def laid_out(sizing: Any, spec: StudySpec) -> Any:
    """A fixed sizing decision as the one for ``spec``: a runner pod per trial at once, each
    running the decision's ``trials_per_device`` (for tests not about the layout, which
    :func:`~hpo_operator.sizing.choose_resource` decides)."""
    if not isinstance(sizing, SizingDecision) or sizing.trials is not None:
        return sizing
    return dataclasses.replace(sizing, pods=spec.resources.parallelism)
