"""Feasibility of a trial under the study's constraints (``spec.constraints``).

The runner records each constraint's value with the trial as Optuna does
(``Trial.set_constraint``: at most 0 means the bound holds), so Optuna's samplers, its
``best_trial`` and ``best_trials`` and kubetune's own outputs read the same values.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from optuna.trial import FrozenTrial

from kubetune_api.spec import StudySpec

__all__ = ["feasible", "record_constraints", "violated"]


def record_constraints(trial: optuna.Trial, spec: StudySpec, metrics: Mapping[str, float]) -> bool:
    """Record each constraint's value of a finished trial (``metric - max``, ``min - metric``:
    at most 0 when it holds); whether the trial is feasible."""
    feasible = True
    for constraint in spec.constraints or ():
        violation = constraint.violation(metrics[constraint.metric])
        trial.set_constraint(constraint.metric, violation)
        feasible = feasible and violation <= 0.0
    return feasible


def feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint value recorded with ``trial`` holds (a trial without
    constraint values, as in a study without constraints, is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def violated(trial: FrozenTrial) -> list[str]:
    """The metrics whose constraint ``trial`` violates, by name."""
    return sorted(name for name, value in trial.constraints.items() if value > 0.0)
