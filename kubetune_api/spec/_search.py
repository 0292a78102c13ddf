"""What a study searches and how: its objectives, search space, stages, sampler and pruner."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field

from kubetune_api.spec._base import (
    GROUP_PATTERN,
    MAX_SEED,
    NAME_PATTERN,
    PARAM_NAME_PATTERN,
    ChoiceValue,
    IntOrNumber,
    Number,
    SpecModel,
    best_first,
    is_better,
    number_or_none,
)
from kubetune_api.spec._parse import parse_number


class Objective(SpecModel):
    metric: str = Field(
        min_length=1, max_length=253, description="Name of the metric the task returns."
    )
    direction: Literal["Maximize", "Minimize"] = Field(
        default="Maximize", description="Whether larger or smaller metric values are better."
    )

    def better(self, a: float, b: float, margin: float = 0.0) -> bool:
        """Whether score ``a`` beats ``b`` by more than ``margin``."""
        return is_better(self.direction, a, b, margin)

    def best_first(self, value: float) -> float:
        """A sort key that puts the best score first."""
        return best_first(self.direction, value)


class Constraint(SpecModel):
    """A bound on a metric the task returns: a trial outside it is infeasible (recorded, never
    the best, never on the front) and the sampler learns to avoid it."""

    metric: str = Field(
        min_length=1, max_length=253, description="Name of a metric the task returns."
    )
    max: Number | None = Field(default=None, description="Feasible when metric <= max.")
    min: Number | None = Field(default=None, description="Feasible when metric >= min.")

    @cached_property
    def max_value(self) -> float | None:
        return number_or_none(self.max)

    @cached_property
    def min_value(self) -> float | None:
        return number_or_none(self.min)

    def violation(self, value: float) -> float:
        """How far ``value`` lies outside the bounds: at most 0 when feasible (Optuna's
        convention for a constraint value)."""
        over = value - self.max_value if self.max_value is not None else -math.inf
        under = self.min_value - value if self.min_value is not None else -math.inf
        return max(over, under)

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return f"{self.metric} {' and '.join(parts)}"


class Condition(SpecModel):
    """When a parameter is active: another parameter's value is one of ``in``."""

    parameter: str = Field(
        pattern=PARAM_NAME_PATTERN,
        max_length=63,
        description="A Categorical or Int parameter listed before this one.",
    )
    values: list[ChoiceValue] = Field(
        alias="in",
        min_length=1,
        max_length=256,
        description="Values of that parameter under which this one is active (its choices, or "
        "integers of its range).",
    )


class Parameter(SpecModel):
    name: str = Field(pattern=PARAM_NAME_PATTERN, max_length=63)
    type: Literal["Float", "Int", "Categorical"]
    low: IntOrNumber | None = Field(default=None, description="Lower bound (Float, Int).")
    high: IntOrNumber | None = Field(default=None, description="Upper bound (Float, Int).")
    step: IntOrNumber | None = Field(default=None, description="Discretisation step.")
    scale: Literal["Linear", "Log"] = Field(default="Linear")
    choices: list[ChoiceValue] | None = Field(
        default=None,
        max_length=256,
        description="Values of a Categorical parameter (integers or strings).",
    )
    group: str = Field(default="Default", pattern=GROUP_PATTERN, max_length=63)
    default: ChoiceValue | None = Field(
        default=None,
        description="Value used while the parameter's group is not searched: a number for "
        "Float and Int, one of the choices for Categorical.",
    )
    when: Condition | None = Field(
        default=None,
        description="Active only when another parameter has one of the given values; an "
        "inactive parameter is absent from the trial. Conditions may chain.",
    )

    @cached_property
    def low_value(self) -> float | None:
        return number_or_none(self.low)

    @cached_property
    def high_value(self) -> float | None:
        return number_or_none(self.high)

    @cached_property
    def step_value(self) -> float | None:
        return number_or_none(self.step)

    def active(self, params: Mapping[str, Any], by_name: Mapping[str, Parameter]) -> bool:
        """Whether this parameter is active given the values chosen before it (``params``: an
        inactive parameter is absent there, so a chain of conditions falls with its first)."""
        if self.when is None:
            return True
        parent = by_name.get(self.when.parameter)
        if parent is None or self.when.parameter not in params:
            return False
        value = params[self.when.parameter]
        return any(parent.typed(v) == value for v in self.when.values)

    def typed(self, raw: int | str) -> int | float | str:
        """A bound, default or choice as this parameter's type (Int, Float, or as given)."""
        if self.type == "Int":
            return int(float(raw)) if isinstance(raw, str) else raw
        if self.type == "Float":
            return parse_number(raw)
        return raw


class Stage(SpecModel):
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    groups: list[Annotated[str, Field(pattern=GROUP_PATTERN, max_length=63)]] = Field(
        min_length=1, max_length=64
    )
    trials: int | None = Field(
        default=None, ge=1, description="Trials of this stage; the last stage may take the rest."
    )


class Sampler(SpecModel):
    type: Literal["Auto", "TPE", "Random", "CMAES", "GP", "QMC", "NSGAII", "NSGAIII"] = Field(
        default="Auto",
        description="Auto (the default) picks one from the search space, the objectives, the "
        "constraints and the budget; status.sampler says which and why.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Seed of the sampler and the data splits."
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    population_size: int | None = Field(
        default=None,
        ge=2,
        le=10000,
        description="NSGAII and NSGAIII only: trials per generation (default 50).",
    )
    constant_liar: bool = Field(
        default=True, description="TPE only: treat running trials as bad to spread workers."
    )
    multivariate: bool = Field(default=True, description="TPE only.")


class Pruner(SpecModel):
    type: Literal[
        "Nop", "Median", "Percentile", "Hyperband", "SuccessiveHalving", "Wilcoxon", "MOASHA"
    ] = Field(
        default="Nop",
        description="MOASHA (successive halving over the objective vectors) is the one pruner "
        "of a study with several objectives; the others take one objective.",
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    n_warmup_steps: int | None = Field(default=None, ge=0)
    percentile: Number | None = None
    min_resource: int | None = Field(default=None, ge=1)
    max_resource: int | None = Field(default=None, ge=1)
    reduction_factor: int | None = Field(default=None, ge=2)
    p_threshold: Number | None = None
    patience: int | None = Field(
        default=None, ge=0, description="Wrap the pruner in PatientPruner with this patience."
    )
    min_delta: Number | None = Field(default=None, description="PatientPruner min_delta.")

    @cached_property
    def percentile_value(self) -> float | None:
        return number_or_none(self.percentile)

    @cached_property
    def p_threshold_value(self) -> float | None:
        return number_or_none(self.p_threshold)

    @cached_property
    def min_delta_value(self) -> float | None:
        return number_or_none(self.min_delta)
