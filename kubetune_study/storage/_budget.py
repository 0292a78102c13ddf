"""The study's live budget and start time, kept in its user attributes.

The budget is written by whoever creates the study (``kubetune run`` or the operator) and
re-written when the HPOStudy is edited, so every runner reads the same budget from the storage.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import optuna

from kubetune_api.contract import BUDGET_ATTR, STARTED_ATTR
from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS, StudySpec
from kubetune_study.progress import BudgetState

__all__ = [
    "budget_from_spec",
    "budget_of",
    "elapsed_of",
    "read_budget",
    "write_budget",
]


def budget_from_spec(spec: StudySpec) -> BudgetState:
    return BudgetState(
        max_trials=spec.budget.max_trials,
        max_failed_trials=spec.budget.max_failed_trials,
        max_consecutive_failed_trials=spec.budget.max_consecutive_failed_trials,
        timeout_seconds=spec.budget.timeout_seconds,
        stage_trials=tuple(s.trials for s in spec.stages) if spec.stages else (),
    )


def write_budget(study: optuna.Study, budget: BudgetState) -> None:
    study.set_user_attr(
        BUDGET_ATTR,
        {
            "maxTrials": budget.max_trials,
            "maxFailedTrials": budget.max_failed_trials,
            "maxConsecutiveFailedTrials": budget.max_consecutive_failed_trials,
            "timeoutSeconds": budget.timeout_seconds,
            "stageTrials": list(budget.stage_trials),
        },
    )


def read_budget(study: optuna.Study) -> BudgetState | None:
    return budget_of(study.user_attrs)


def budget_of(user_attrs: dict[str, Any]) -> BudgetState | None:
    """The budget stored in a study's ``user_attrs`` (``None`` when there is none)."""
    raw = user_attrs.get(BUDGET_ATTR)
    if not isinstance(raw, dict):
        return None
    return BudgetState(
        max_trials=int(raw["maxTrials"]),
        max_failed_trials=raw.get("maxFailedTrials"),
        # Budgets stored before the failure breaker get its default.
        max_consecutive_failed_trials=int(
            raw.get("maxConsecutiveFailedTrials") or DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS
        ),
        timeout_seconds=raw.get("timeoutSeconds"),
        stage_trials=tuple(raw.get("stageTrials") or ()),
    )


def elapsed_of(user_attrs: dict[str, Any]) -> float | None:
    """Seconds since the study started, from its ``user_attrs`` (``None`` when not recorded)."""
    started = user_attrs.get(STARTED_ATTR)
    if not isinstance(started, str):
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
