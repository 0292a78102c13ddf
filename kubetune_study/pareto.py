"""The Pareto front of a study with several objectives (pure; no storage access).

Optuna finds the front (``optuna.study._multi_objective``, what ``Study.best_trials`` uses);
this module only orders it, picks a bounded few of it for places that must stay small (the
HPOStudy status), and writes it as the one document the ``<study>-best`` ConfigMap and
``kubetune results --output`` share.

Order: best by the first objective first, ties broken by the next objectives, then by trial
number (:func:`kubetune_api.spec.best_first_key`), so every reader lists the front the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.study import StudyDirection
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.spec import Objective, best_first_key
from kubetune_study.constraints import feasible

__all__ = [
    "ParetoPoint",
    "front_document",
    "front_trials",
    "ordered_front",
    "pareto_front",
    "spread",
]


@dataclass(frozen=True)
class ParetoPoint:
    """One trial of the front: its number, its value of each objective, its parameters."""

    number: int
    values: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)


def pareto_front(
    trials: Sequence[FrozenTrial], directions: Sequence[str]
) -> tuple[ParetoPoint, ...]:
    """The complete trials no other complete trial dominates, in the module's order."""
    return ordered_front(front_trials(trials, directions), directions)


def front_trials(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The feasible complete trials of ``trials`` no other one dominates (unordered); a trial
    outside the study's constraints is never on the front.

    The front of a front plus new trials is the front of all of them, which is how
    :class:`kubetune_study.progress.ProgressTally` keeps it up to date.
    """
    # Optuna keeps NaN out of complete trials (it fails them).
    scored = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and feasible(t)
        and t.values is not None
        and len(t.values) == len(directions)
    ]
    optuna_directions = [
        StudyDirection.MAXIMIZE if d == "Maximize" else StudyDirection.MINIMIZE for d in directions
    ]
    return list(_get_pareto_front_trials_by_trials(scored, optuna_directions))


def ordered_front(
    front: Sequence[FrozenTrial], directions: Sequence[str]
) -> tuple[ParetoPoint, ...]:
    """``front`` in the module's order, as :class:`ParetoPoint`."""
    ordered = sorted(front, key=lambda t: (best_first_key(directions, t.values), t.number))
    return tuple(ParetoPoint(t.number, tuple(t.values), dict(t.params)) for t in ordered)


def spread(front: Sequence[ParetoPoint], limit: int) -> tuple[ParetoPoint, ...]:
    """At most ``limit`` trials of ``front``, evenly spaced along its order, both ends kept.

    The ends are the best trial of the first objective and the best of the last in the order;
    the rest sample the trade-off between them, the same ones on every call.
    """
    if len(front) <= limit:
        return tuple(front)
    if limit <= 1:
        return tuple(front[:limit])
    last = len(front) - 1
    picked = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return tuple(front[i] for i in picked)


def front_document(
    front: Sequence[ParetoPoint], objectives: Sequence[Objective], limit: int | None = None
) -> dict[str, Any]:
    """The front as plain data (for YAML): objectives, size, and each trial's values by
    metric and parameters; with ``limit``, at most that many trials (:func:`spread`)."""
    shown = spread(front, limit) if limit is not None else tuple(front)
    return {
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
        "size": len(front),
        "trials": [
            {
                "trial": t.number,
                "values": {o.metric: v for o, v in zip(objectives, t.values, strict=True)},
                "params": dict(t.params),
            }
            for t in shown
        ],
    }
