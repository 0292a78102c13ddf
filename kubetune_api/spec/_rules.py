"""Rules that span fields (mirrored by the CRD's CEL rules in ``kubetune_api.crd``)."""

from __future__ import annotations

import math
import re

from kubetune_api.spec._base import MULTI_OBJECTIVE_SAMPLERS
from kubetune_api.spec._errors import FieldError
from kubetune_api.spec._models import StudySpec
from kubetune_api.spec._parse import parse_number
from kubetune_api.spec._search import Parameter
from kubetune_api.spec._template import template_errors

__all__ = ["point_value_error", "semantic_errors"]


def semantic_errors(spec: StudySpec, prefix: str = "spec") -> list[FieldError]:
    """Every cross-field problem of a structurally valid spec (mirrored by the CRD's CEL)."""
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        errors.append(FieldError(f"{prefix}.{path}", message))

    names: dict[str, int] = {}
    for i, p in enumerate(spec.search_space):
        at = f"searchSpace[{i}]"
        if p.name in names:
            err(
                f"{at}.name",
                f"duplicate parameter name {p.name!r} (also searchSpace[{names[p.name]}])",
            )
        names.setdefault(p.name, i)
        errors.extend(_parameter_errors(p, f"{prefix}.{at}"))

    groups = {p.group for p in spec.search_space}
    if spec.stages:
        searched: set[str] = set()
        unknown = False
        for i, stage in enumerate(spec.stages):
            for j, group in enumerate(stage.groups):
                if group not in groups:
                    unknown = True
                    err(
                        f"stages[{i}].groups[{j}]",
                        f"unknown group {group!r} "
                        f"(groups in searchSpace: {', '.join(sorted(groups))})",
                    )
            if stage.trials is None and i != len(spec.stages) - 1:
                err(f"stages[{i}].trials", "required on every stage but the last")
            searched.update(stage.groups)
        stage_names = [s.name for s in spec.stages if s.name]
        if len(stage_names) != len(set(stage_names)):
            err("stages", "stage names must be unique")
        # A misspelt group leaves its parameters unsearched; saying so as well would point
        # at the parameters instead of the typo.
        for i, p in enumerate(spec.search_space):
            if p.group not in searched and not unknown:
                err(
                    f"searchSpace[{i}].group",
                    f"group {p.group!r} is not searched by any stage",
                )
        first = set(spec.stages[0].groups)
        for i, p in enumerate(spec.search_space):
            if p.group not in first and p.default is None and not unknown:
                err(
                    f"searchSpace[{i}].default",
                    f"required: group {p.group!r} is not searched in the first stage, so "
                    "the parameter needs a value until then",
                )
        fixed = sum(s.trials or 0 for s in spec.stages)
        needed = fixed + (1 if spec.stages[-1].trials is None else 0)
        if needed > spec.budget.max_trials:
            err(
                "budget.maxTrials",
                f"must cover the stages' trials ({needed} needed, got {spec.budget.max_trials})",
            )

    bs = spec.training.batch_size_parameter
    if bs in names:
        p = spec.search_space[names[bs]]
        if p.type == "Float":
            err(
                f"searchSpace[{names[bs]}].type",
                f"{bs!r} is the batch size: must be Int or Categorical",
            )
        if (
            p.type == "Categorical"
            and p.choices
            and not all(isinstance(c, int) and c > 0 for c in p.choices)
        ):
            err(f"searchSpace[{names[bs]}].choices", "batch sizes must be positive integers")

    if spec.training.epoch_schedule:
        starts = [e.from_trial for e in spec.training.epoch_schedule]
        if starts != sorted(set(starts)):
            err("training.epochSchedule", "fromTrial must strictly increase")
        if starts and starts[0] != 0:
            err(
                "training.epochSchedule[0].fromTrial", "must be 0 so every trial has an epoch count"
            )

    budget = spec.budget
    if budget.timeout_seconds == 0:
        err("budget.timeout", f"must be longer than 0 (got {budget.timeout!r})")
    if budget.trial_timeout_seconds == 0:
        err("budget.trialTimeout", f"must be longer than 0 (got {budget.trial_timeout!r})")
    if budget.stall_timeout_seconds == 0:
        err(
            "budget.stallTimeout",
            f"must be Auto or longer than 0 (got {budget.stall_timeout!r})",
        )

    if not 0 <= spec.resources.headroom_fraction <= 4:
        err(
            "resources.memoryHeadroom",
            f"must be between 0 and 4 (got {spec.resources.memory_headroom})",
        )

    profile = spec.training.profile
    if profile is not None:
        if profile.trials == "EveryN" and profile.every is None:
            err("training.profile.every", "required when trials is EveryN")
        if profile.trials != "EveryN" and profile.every is not None:
            err("training.profile.every", "only used with trials: EveryN")

    pr = spec.pruner
    if pr.percentile_value is not None and not 0 <= pr.percentile_value <= 100:
        err("pruner.percentile", f"must be between 0 and 100 (got {pr.percentile})")
    if pr.p_threshold_value is not None and not 0 < pr.p_threshold_value <= 1:
        err("pruner.pThreshold", f"must be in (0, 1] (got {pr.p_threshold})")
    if pr.type == "Percentile" and pr.percentile is None:
        err("pruner.percentile", "required when type is Percentile")
    if pr.min_resource and pr.max_resource and pr.min_resource >= pr.max_resource:
        err("pruner.maxResource", f"must be above minResource (got {pr.max_resource})")
    if pr.min_delta is not None and pr.patience is None:
        err("pruner.minDelta", "only used with patience: set pruner.patience too")
    errors.extend(_objective_errors(spec, prefix))
    errors.extend(_warm_start_errors(spec, prefix))
    if spec.runner.template is not None:
        errors.extend(template_errors(spec.runner.template, f"{prefix}.runner.template"))
    if spec.runner.shared_memory is not None and spec.runner.shared_memory_bytes(0) == 0:
        err("runner.sharedMemory", "must be more than 0")
    return errors


def _objective_errors(spec: StudySpec, prefix: str) -> list[FieldError]:
    """One objective or several, and what several objectives rule out."""
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        errors.append(FieldError(f"{prefix}.{path}", message))

    if spec.objective is not None and spec.objectives is not None:
        err(
            "objectives",
            "mutually exclusive with spec.objective: give one objective, or a list of "
            "several in objectives",
        )
    if spec.objective is None and spec.objectives is None:
        err("objective", "required: one objective, or a list of several in spec.objectives")
    if spec.sampler.population_size is not None and spec.sampler.type not in ("NSGAII", "NSGAIII"):
        err("sampler.populationSize", "only used by the NSGAII and NSGAIII samplers")
    if not spec.objectives:
        return errors
    seen: dict[str, int] = {}
    for i, objective in enumerate(spec.objectives):
        if objective.metric in seen:
            err(
                f"objectives[{i}].metric",
                f"duplicate metric {objective.metric!r} "
                f"(also objectives[{seen[objective.metric]}])",
            )
        seen.setdefault(objective.metric, i)
    if spec.sampler.type not in MULTI_OBJECTIVE_SAMPLERS:
        err(
            "sampler.type",
            f"{spec.sampler.type} cannot optimise several objectives; use one of "
            f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
        )
    if spec.pruner.type != "Nop":
        err(
            "pruner.type",
            "must be Nop with several objectives: Optuna cannot prune a multi-objective trial "
            "(a pruner compares one intermediate value)",
        )
    if spec.pruner.patience is not None:
        err("pruner.patience", "not accepted with several objectives (nothing is pruned)")
    return errors


def _warm_start_errors(spec: StudySpec, prefix: str) -> list[FieldError]:
    """Warm-start points name parameters of this search space with values they accept, and
    fit in the first stage; fromStudy names one source."""
    ws = spec.warm_start
    if ws is None:
        return []
    errors: list[FieldError] = []
    at = f"{prefix}.warmStart"

    def err(path: str, message: str) -> None:
        errors.append(FieldError(f"{at}{path}", message))

    if ws.points is None and ws.from_study is None:
        err("", "set points, fromStudy or both")
    by_name = {p.name: p for p in spec.search_space}
    first_groups = set(spec.stages[0].groups) if spec.stages else None
    for i, point in enumerate(ws.points or []):
        names: set[str] = set()
        for j, given in enumerate(point.params):
            here = f".points[{i}].params[{j}]"
            if given.name in names:
                err(f"{here}.name", f"duplicate parameter {given.name!r} in this point")
            names.add(given.name)
            parameter = by_name.get(given.name)
            if parameter is None:
                err(
                    f"{here}.name",
                    f"{given.name!r} is not a searchSpace parameter "
                    f"(parameters: {', '.join(by_name)})",
                )
                continue
            problem = point_value_error(parameter, given.value)
            if problem:
                err(f"{here}.value", problem)
            if first_groups is not None and parameter.group not in first_groups:
                err(
                    f"{here}.name",
                    f"group {parameter.group!r} is not searched in the first stage (stages[0] "
                    f"searches {', '.join(sorted(first_groups))}): points are the first "
                    "stage's first trials",
                )
    source = ws.from_study
    if source is not None:
        if (source.hpo_study is None) == (source.study_name is None):
            err(".fromStudy", "set exactly one of hpoStudy and studyName")
        if source.mode == "Reevaluate" and source.top_k is None:
            err(".fromStudy.topK", "required when mode is Reevaluate")
        if source.mode == "AddTrials" and source.top_k is not None:
            err(".fromStudy.topK", "only used when mode is Reevaluate")
    enqueued = len(ws.points or []) + (
        source.top_k or 0 if source is not None and source.mode == "Reevaluate" else 0
    )
    room = spec.budget.max_trials
    where = "budget.maxTrials"
    if spec.stages and spec.stages[0].trials is not None:
        room, where = min(room, spec.stages[0].trials), "stages[0].trials"
    if enqueued > room:
        err(
            "",
            f"{enqueued} trials to evaluate first (points and fromStudy.topK) do not fit in "
            f"{where} ({room})",
        )
    return errors


def point_value_error(p: Parameter, raw: int | str) -> str | None:
    """Why ``raw`` is not a value of parameter ``p`` (``None`` when it is one).

    The checks Optuna's distribution of ``p`` makes (type, bounds, step), so a point that
    validates is evaluated as written.
    """
    if p.type == "Categorical":
        choices = p.choices or []
        if raw not in choices:
            return f"must be one of the choices of {p.name!r} (got {raw!r})"
        return None
    if isinstance(raw, str) and not _is_number(raw):
        return f"must be a number for a {p.type} parameter (got {raw!r})"
    if p.type == "Int" and not _is_integral(raw):
        return f"must be an integer for an Int parameter (got {raw!r})"
    value = parse_number(raw)
    low, high, step = p.low_value, p.high_value, p.step_value
    if low is None or high is None or not low <= value <= high:
        return f"must lie within [{p.low}, {p.high}] (got {raw})"
    if step is not None and step > 0 and low is not None:
        k = (value - low) / step
        if abs(k - round(k)) > 1e-8:
            return f"must be low plus a multiple of step {p.step} (got {raw})"
    return None


def _parameter_errors(p: Parameter, at: str) -> list[FieldError]:
    errors: list[FieldError] = []

    def err(field: str, message: str) -> None:
        errors.append(FieldError(f"{at}.{field}", message))

    if p.type == "Categorical":
        if not p.choices:
            err("choices", "required and non-empty for a Categorical parameter")
        elif len(set(map(repr, p.choices))) != len(p.choices):
            err("choices", "must not repeat a value")
        for field in ("low", "high", "step"):
            if getattr(p, field) is not None:
                err(field, "not accepted for a Categorical parameter (use choices)")
        if p.scale != "Linear":
            err("scale", "not accepted for a Categorical parameter")
        if p.default is not None and p.choices and p.default not in p.choices:
            err("default", f"must be one of the choices (got {p.default!r})")
        return errors

    if p.choices is not None:
        err("choices", f"not accepted for a {p.type} parameter (use low and high)")
    bounds_ok = True
    for field in ("low", "high"):
        value = getattr(p, field)
        if value is None:
            err(field, f"required for a {p.type} parameter")
            bounds_ok = False
        elif p.type == "Int" and not _is_integral(value):
            err(field, f"must be an integer for an Int parameter (got {value!r})")
            bounds_ok = False
    if not bounds_ok:
        return errors
    assert p.low_value is not None and p.high_value is not None
    low, high = p.low_value, p.high_value
    if not (math.isfinite(low) and math.isfinite(high)):
        err("low", "bounds must be finite")
        return errors
    if low >= high:
        err("low", f"must be below high (got low={p.low}, high={p.high})")
    if p.scale == "Log" and low <= 0:
        err("low", f"must be above 0 with scale Log (got {p.low})")
    if p.step is not None:
        assert p.step_value is not None
        if p.step_value <= 0:
            err("step", f"must be above 0 (got {p.step})")
        elif p.scale == "Log":
            err("step", "not accepted with scale Log")
        elif p.type == "Int" and not _is_integral(p.step):
            err("step", f"must be an integer for an Int parameter (got {p.step!r})")
    if p.default is not None:
        default = parse_number(p.default) if _is_number(p.default) else None
        if default is None:
            err("default", f"must be a number for a {p.type} parameter (got {p.default!r})")
        elif not low <= default <= high:
            err("default", f"must lie within [low, high] (got {p.default})")
        elif p.type == "Int" and not _is_integral(p.default):
            err("default", f"must be an integer for an Int parameter (got {p.default!r})")
    return errors


def _is_number(value: int | str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_integral(value: int | str) -> bool:
    if isinstance(value, int):
        return True
    try:
        return float(value).is_integer() and re.fullmatch(r"[-+]?[0-9]+", value) is not None
    except ValueError:
        return False
