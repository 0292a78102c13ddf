"""The HPOStudy models: what a study file (or the API object's ``spec``) may hold.

Structure (types, enums, required fields, unknown fields) is checked by pydantic in strict
mode. Numbers that are not counts are strings (``"1e-4"``), following the Kubernetes API
convention of no floats in specs; each model parses its own once and exposes the value
(``Resources.headroom_fraction``, ``EarlyStopping.min_delta_value``, ...), so nothing
downstream parses them again. :meth:`Objective.better` is the one place that says which of
two scores is better.

The models live by topic: :mod:`._base` (base model, patterns, bounds, the order of scores),
:mod:`._search`, :mod:`._training`, :mod:`._runner`, :mod:`._budget`, :mod:`._warm_start`;
this module assembles them into :class:`StudySpec` and :class:`HPOStudy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from kubetune_api.contract import ApiVersion
from kubetune_api.spec._base import (
    MAX_CONSTRAINTS,
    MAX_OBJECTIVES,
    MAX_PARAMETERS,
    MAX_STAGES,
    SpecModel,
)
from kubetune_api.spec._budget import Budget, Storage
from kubetune_api.spec._metadata import ObjectMeta
from kubetune_api.spec._runner import Resources, Runner
from kubetune_api.spec._search import Constraint, Objective, Parameter, Pruner, Sampler, Stage
from kubetune_api.spec._training import TaskSpec, Training
from kubetune_api.spec._warm_start import WarmStart


class StudySpec(SpecModel):
    objective: Objective | None = Field(
        default=None, description="The metric to optimise (or objectives, for several)."
    )
    objectives: list[Objective] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_OBJECTIVES,
        description="Several metrics to optimise at once (a Pareto front); instead of objective.",
    )
    task: TaskSpec
    search_space: list[Parameter] = Field(min_length=1, max_length=MAX_PARAMETERS)
    stages: list[Stage] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_STAGES,
        description="Progressive stages; omitted, the whole search space is one stage.",
    )
    constraints: list[Constraint] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CONSTRAINTS,
        description="Bounds on metrics the task returns; a trial outside one is infeasible.",
    )
    budget: Budget
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    runner: Runner = Field(
        default_factory=Runner,
        description="The runner pods' own part: a pod template and /dev/shm.",
    )
    storage: Storage = Field(default_factory=Storage)
    warm_start: WarmStart | None = None
    suspend: bool = False

    @property
    def all_objectives(self) -> tuple[Objective, ...]:
        """``objectives``, or ``objective`` alone (a validated spec has one of them)."""
        if self.objectives:
            return tuple(self.objectives)
        assert self.objective is not None, "a validated spec has objective or objectives"
        return (self.objective,)

    @property
    def primary_objective(self) -> Objective:
        """The objective that scores a fold's epochs (early stopping, the epoch a fold keeps)
        and keeps the best checkpoint: ``objective``, or the first of ``objectives``."""
        return self.all_objectives[0]

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(o.direction for o in self.all_objectives)

    @property
    def multi_objective(self) -> bool:
        return bool(self.objectives)

    def active_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` without the parameters their own values make inactive (``when``) and
        without names the search space lacks, in the order of the search space."""
        by_name = {p.name: p for p in self.search_space}
        kept: dict[str, Any] = {}
        for p in self.search_space:
            if p.name in params and p.active(kept, by_name):
                kept[p.name] = params[p.name]
        return kept


class HPOStudy(SpecModel):
    api_version: ApiVersion
    kind: Literal["HPOStudy"]
    metadata: ObjectMeta
    spec: StudySpec
    #: What ``kubectl get -o yaml`` saves with the study: accepted and ignored, as the API
    #: server ignores a status sent with the spec.
    status: Any = Field(default=None, exclude=True)

    @property
    def name(self) -> str:
        return self.metadata.name
