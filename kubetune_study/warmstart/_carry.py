"""Source trials as this study sees them: the parameters that fit its search space, their
values of its objectives, and their order for re-evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial

from kubetune_api.contract import (
    TELEMETRY_ATTR,
)
from kubetune_api.spec import Parameter, StudySpec, best_first_key
from kubetune_study.search import distribution, in_distribution

__all__ = ["Carried", "carry", "prior_values", "rank_for_reevaluation"]


@dataclass(frozen=True)
class Carried:
    """A source trial as this study sees it: the parameters that fit, and those that do not."""

    trial: FrozenTrial
    params: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return not self.problems


def carry(trial: FrozenTrial, spec: StudySpec) -> tuple[Carried, set[str]]:
    """``trial``'s parameters that are values of this search space's distributions, the
    problems of those that are not, and the names of parameters this space lacks."""
    by_name = {p.name: p for p in spec.search_space}
    params: dict[str, Any] = {}
    problems: list[str] = []
    dropped: set[str] = set()
    for name, value in trial.params.items():
        parameter = by_name.get(name)
        if parameter is None:
            dropped.add(name)
            continue
        fits, external = in_distribution(distribution(parameter), value)
        if fits:
            params[name] = external
        else:
            problems.append(_misfit(parameter, value))
    # A parameter the carried values make inactive here is absent, as in a trial of this study.
    active = spec.active_params(params)
    dropped.update(name for name in params if name not in active)
    return Carried(trial, active, tuple(problems)), dropped


def _misfit(p: Parameter, value: Any) -> str:
    """Why ``value`` is not a value of ``p``, for a report."""
    if p.type == "Categorical":
        return f"{p.name}={value!r} is not one of the choices {p.choices}"
    step = f" with step {p.step}" if p.step is not None else ""
    scale = " (Log)" if p.scale == "Log" else ""
    return f"{p.name}={value!r} does not fit {p.type} [{p.low}, {p.high}]{step}{scale}"


def prior_values(
    trial: FrozenTrial, spec: StudySpec, source_metrics: Sequence[str] | None
) -> list[float] | str:
    """The trial's value of each of this study's objectives, or why there is none.

    By metric name: the metrics kubetune recorded with the trial, else the source study's
    values under its metric names. A study without either cannot say what its values measure.
    """
    recorded = (trial.user_attrs.get(TELEMETRY_ATTR) or {}).get("metrics") or {}
    named = dict(zip(source_metrics or [], trial.values or [], strict=False))
    values: list[float] = []
    missing: list[str] = []
    for objective in spec.all_objectives:
        if objective.metric in recorded:
            values.append(float(recorded[objective.metric]))
        elif objective.metric in named:
            values.append(float(named[objective.metric]))
        else:
            missing.append(objective.metric)
    if missing:
        return f"no value of {', '.join(repr(m) for m in missing)} recorded"
    return values


def rank_for_reevaluation(carried: Sequence[Carried], directions: Sequence[str]) -> list[Carried]:
    """Compatible source trials, best first under the source's own objectives: by
    non-domination rank (NSGA-II's; with one objective, simply by value), then by the first
    objective, then by trial number."""
    usable = [c for c in carried if c.compatible and c.trial.values is not None]
    if not usable:
        return []
    losses = np.asarray([best_first_key(directions, c.trial.values) for c in usable])
    ranks = _fast_non_domination_rank(losses)
    order = sorted(
        range(len(usable)),
        key=lambda i: (
            int(ranks[i]),
            best_first_key(directions, usable[i].trial.values),
            usable[i].trial.number,
        ),
    )
    return [usable[i] for i in order]
