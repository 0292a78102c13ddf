"""Rules that span fields (mirrored by the CRD's CEL rules in ``kubetune_api.crd``).

One checker per concern (search space, stages, batch size, epoch schedule, budget, resources,
profile, pruner, objectives, warm start, runner), each adding what it finds to a
:class:`~kubetune_api.spec._errors.Findings`; :func:`semantic_errors` runs them in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kubetune_api.spec._base import CONSTRAINED_SAMPLERS, MULTI_OBJECTIVE_SAMPLERS
from kubetune_api.spec._condition_rules import condition_errors
from kubetune_api.spec._errors import FieldError, Findings
from kubetune_api.spec._models import StudySpec
from kubetune_api.spec._parameter_rules import parameter_errors, point_value_error
from kubetune_api.spec._template import template_errors
from kubetune_api.spec._warm_start import ParameterValue

__all__ = ["point_value_error", "semantic_errors"]


def semantic_errors(spec: StudySpec, prefix: str = "spec") -> list[FieldError]:
    """Every cross-field problem of a structurally valid spec (mirrored by the CRD's CEL)."""
    found = Findings(prefix)
    for check in _CHECKS:
        check(spec, found)
    return found.errors


def _first_index_by_name(spec: StudySpec) -> dict[str, int]:
    """Each search-space parameter name and the index of its first parameter."""
    names: dict[str, int] = {}
    for i, p in enumerate(spec.search_space):
        names.setdefault(p.name, i)
    return names


def _unique(keys: Sequence[str], at: str, what: str, found: Findings) -> None:
    """Each of ``keys`` (of the list at ``at``, by the field ``what.split()[-1]``) once."""
    field = what.split()[-1]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in first:
            found.add(f"{at}[{i}].{field}", f"duplicate {what} {key!r} (also {at}[{first[key]}])")
        first.setdefault(key, i)


def _search_space(spec: StudySpec, found: Findings) -> None:
    """Unique parameter names, and each parameter's own rules."""
    _unique([p.name for p in spec.search_space], "searchSpace", "parameter name", found)
    for i, p in enumerate(spec.search_space):
        parameter_errors(p, f"searchSpace[{i}]", found)


def _stages(spec: StudySpec, found: Findings) -> None:
    """Stages search known groups, every group is searched, parameters outside the first
    stage have a default, and the budget covers the stages' trials."""
    if not spec.stages:
        return
    groups = {p.group for p in spec.search_space}
    searched: set[str] = set()
    unknown = False
    for i, stage in enumerate(spec.stages):
        for j, group in enumerate(stage.groups):
            if group not in groups:
                unknown = True
                found.add(
                    f"stages[{i}].groups[{j}]",
                    f"unknown group {group!r} (groups in searchSpace: {', '.join(sorted(groups))})",
                )
        if stage.trials is None and i != len(spec.stages) - 1:
            found.add(f"stages[{i}].trials", "required on every stage but the last")
        searched.update(stage.groups)
    stage_names = [s.name for s in spec.stages if s.name]
    if len(stage_names) != len(set(stage_names)):
        found.add("stages", "stage names must be unique")
    # A misspelt group leaves its parameters unsearched; saying so as well would point
    # at the parameters instead of the typo.
    for i, p in enumerate(spec.search_space):
        if p.group not in searched and not unknown:
            found.add(f"searchSpace[{i}].group", f"group {p.group!r} is not searched by any stage")
    first = set(spec.stages[0].groups)
    for i, p in enumerate(spec.search_space):
        if p.group not in first and p.default is None and not unknown:
            found.add(
                f"searchSpace[{i}].default",
                f"required: group {p.group!r} is not searched in the first stage, so "
                "the parameter needs a value until then",
            )
    fixed = sum(s.trials or 0 for s in spec.stages)
    needed = fixed + (1 if spec.stages[-1].trials is None else 0)
    if needed > spec.budget.max_trials:
        found.add(
            "budget.maxTrials",
            f"must cover the stages' trials ({needed} needed, got {spec.budget.max_trials})",
        )


def _batch_size(spec: StudySpec, found: Findings) -> None:
    """A searched batch size is an Int, or Categorical over positive integers."""
    bs = spec.training.batch_size_parameter
    names = _first_index_by_name(spec)
    if bs not in names:
        return
    p = spec.search_space[names[bs]]
    if p.type == "Float":
        found.add(
            f"searchSpace[{names[bs]}].type",
            f"{bs!r} is the batch size: must be Int or Categorical",
        )
    if (
        p.type == "Categorical"
        and p.choices
        and not all(isinstance(c, int) and c > 0 for c in p.choices)
    ):
        found.add(f"searchSpace[{names[bs]}].choices", "batch sizes must be positive integers")


def _epoch_schedule(spec: StudySpec, found: Findings) -> None:
    """The epoch schedule starts at trial 0 and strictly increases."""
    if not spec.training.epoch_schedule:
        return
    starts = [e.from_trial for e in spec.training.epoch_schedule]
    if starts != sorted(set(starts)):
        found.add("training.epochSchedule", "fromTrial must strictly increase")
    if starts and starts[0] != 0:
        found.add(
            "training.epochSchedule[0].fromTrial", "must be 0 so every trial has an epoch count"
        )


def _budget(spec: StudySpec, found: Findings) -> None:
    """Timeouts are longer than 0."""
    budget = spec.budget
    if budget.timeout_seconds == 0:
        found.add("budget.timeout", f"must be longer than 0 (got {budget.timeout!r})")
    if budget.trial_timeout_seconds == 0:
        found.add("budget.trialTimeout", f"must be longer than 0 (got {budget.trial_timeout!r})")
    if budget.stall_timeout_seconds == 0:
        found.add(
            "budget.stallTimeout", f"must be Auto or longer than 0 (got {budget.stall_timeout!r})"
        )


def _resources(spec: StudySpec, found: Findings) -> None:
    """The memory headroom is a fraction between 0 and 4."""
    if not 0 <= spec.resources.headroom_fraction <= 4:
        found.add(
            "resources.memoryHeadroom",
            f"must be between 0 and 4 (got {spec.resources.memory_headroom})",
        )


def _profile(spec: StudySpec, found: Findings) -> None:
    """``every`` goes with ``trials: EveryN``, and only with it."""
    profile = spec.training.profile
    if profile is None:
        return
    if profile.trials == "EveryN" and profile.every is None:
        found.add("training.profile.every", "required when trials is EveryN")
    if profile.trials != "EveryN" and profile.every is not None:
        found.add("training.profile.every", "only used with trials: EveryN")


def _pruner(spec: StudySpec, found: Findings) -> None:
    """The pruner's numbers lie in their ranges and its fields go with its type."""
    pr = spec.pruner
    if pr.percentile_value is not None and not 0 <= pr.percentile_value <= 100:
        found.add("pruner.percentile", f"must be between 0 and 100 (got {pr.percentile})")
    if pr.p_threshold_value is not None and not 0 < pr.p_threshold_value <= 1:
        found.add("pruner.pThreshold", f"must be in (0, 1] (got {pr.p_threshold})")
    if pr.type == "Percentile" and pr.percentile is None:
        found.add("pruner.percentile", "required when type is Percentile")
    if pr.min_resource and pr.max_resource and pr.min_resource >= pr.max_resource:
        found.add("pruner.maxResource", f"must be above minResource (got {pr.max_resource})")
    if pr.min_delta is not None and pr.patience is None:
        found.add("pruner.minDelta", "only used with patience: set pruner.patience too")
    if pr.type == "MOASHA" and not spec.objectives:
        found.add(
            "pruner.type",
            "MOASHA prunes studies of several objectives (spec.objectives); with one "
            "objective use SuccessiveHalving",
        )


def _objectives(spec: StudySpec, found: Findings) -> None:
    """One objective or several, and what several objectives rule out."""
    if spec.objective is not None and spec.objectives is not None:
        found.add(
            "objectives",
            "mutually exclusive with spec.objective: give one objective, or a list of "
            "several in objectives",
        )
    if spec.objective is None and spec.objectives is None:
        found.add("objective", "required: one objective, or a list of several in spec.objectives")
    if spec.sampler.population_size is not None and spec.sampler.type not in ("NSGAII", "NSGAIII"):
        found.add("sampler.populationSize", "only used by the NSGAII and NSGAIII samplers")
    if not spec.objectives:
        return
    _unique([o.metric for o in spec.objectives], "objectives", "metric", found)
    if spec.sampler.type not in MULTI_OBJECTIVE_SAMPLERS:
        found.add(
            "sampler.type",
            f"{spec.sampler.type} cannot optimise several objectives; use one of "
            f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
        )
    if spec.pruner.type not in ("Nop", "MOASHA"):
        found.add(
            "pruner.type",
            "must be Nop or MOASHA with several objectives: the other pruners compare one "
            "intermediate value",
        )
    if spec.pruner.patience is not None:
        found.add(
            "pruner.patience", "not accepted with several objectives (PatientPruner takes one)"
        )


def _constraints(spec: StudySpec, found: Findings) -> None:
    """Each constraint bounds its metric (once), and the sampler takes constraints."""
    if not spec.constraints:
        return
    _unique([c.metric for c in spec.constraints], "constraints", "metric", found)
    for i, c in enumerate(spec.constraints):
        at = f"constraints[{i}]"
        if c.max is None and c.min is None:
            found.add(at, "set max, min or both: a constraint bounds its metric")
        elif c.max_value is not None and c.min_value is not None and c.min_value > c.max_value:
            found.add(f"{at}.min", f"must not be above max (got min={c.min}, max={c.max})")
    if spec.sampler.type not in CONSTRAINED_SAMPLERS:
        found.add(
            "sampler.type",
            f"{spec.sampler.type} takes no constraints (spec.constraints); use one of "
            f"{', '.join(CONSTRAINED_SAMPLERS)}",
        )


def _warm_start_points(spec: StudySpec, found: Findings) -> None:
    """Warm-start points name parameters of this search space with values they accept, and
    fit in the first stage."""
    assert spec.warm_start is not None
    by_name = {p.name: p for p in spec.search_space}
    first_groups = set(spec.stages[0].groups) if spec.stages else None
    for i, point in enumerate(spec.warm_start.points or []):
        names: set[str] = set()
        for j, given in enumerate(point.params):
            here = f"warmStart.points[{i}].params[{j}]"
            if given.name in names:
                found.add(f"{here}.name", f"duplicate parameter {given.name!r} in this point")
            names.add(given.name)
            parameter = by_name.get(given.name)
            if parameter is None:
                found.add(
                    f"{here}.name",
                    f"{given.name!r} is not a searchSpace parameter "
                    f"(parameters: {', '.join(by_name)})",
                )
                continue
            problem = point_value_error(parameter, given.value)
            if problem:
                found.add(f"{here}.value", problem)
            if first_groups is not None and parameter.group not in first_groups:
                found.add(
                    f"{here}.name",
                    f"group {parameter.group!r} is not searched in the first stage (stages[0] "
                    f"searches {', '.join(sorted(first_groups))}): points are the first "
                    "stage's first trials",
                )
        _inactive_in_point(spec, i, point.params, found)


def _inactive_in_point(
    spec: StudySpec, index: int, given: Sequence[ParameterValue], found: Findings
) -> None:
    """A point must not set a parameter its own values make inactive (it would be dropped)."""
    by_name = {p.name: p for p in spec.search_space}
    values = {
        v.name: by_name[v.name].typed(v.value)
        for v in given
        if v.name in by_name and point_value_error(by_name[v.name], v.value) is None
    }
    for j, v in enumerate(given):
        p = by_name.get(v.name)
        if p is None or p.when is None or p.when.parameter not in values:
            continue
        if not p.active(values, by_name):
            found.add(
                f"warmStart.points[{index}].params[{j}].name",
                f"{p.name!r} is inactive in this point: it is active only when "
                f"{p.when.parameter} is one of {list(p.when.values)} "
                f"(the point sets {values[p.when.parameter]!r})",
            )


def _warm_start(spec: StudySpec, found: Findings) -> None:
    """A warm start has points or a source study (exactly one named, topK as its mode wants),
    and what it evaluates first fits in the first stage and the budget."""
    ws = spec.warm_start
    if ws is None:
        return
    if ws.points is None and ws.from_study is None:
        found.add("warmStart", "set points, fromStudy or both")
    _warm_start_points(spec, found)
    source = ws.from_study
    if source is not None:
        if (source.hpo_study is None) == (source.study_name is None):
            found.add("warmStart.fromStudy", "set exactly one of hpoStudy and studyName")
        if source.mode == "Reevaluate" and source.top_k is None:
            found.add("warmStart.fromStudy.topK", "required when mode is Reevaluate")
        if source.mode == "AddTrials" and source.top_k is not None:
            found.add("warmStart.fromStudy.topK", "only used when mode is Reevaluate")
    enqueued = len(ws.points or []) + (
        source.top_k or 0 if source is not None and source.mode == "Reevaluate" else 0
    )
    room = spec.budget.max_trials
    where = "budget.maxTrials"
    if spec.stages and spec.stages[0].trials is not None:
        room, where = min(room, spec.stages[0].trials), "stages[0].trials"
    if enqueued > room:
        found.add(
            "warmStart",
            f"{enqueued} trials to evaluate first (points and fromStudy.topK) do not fit in "
            f"{where} ({room})",
        )


def _runner(spec: StudySpec, found: Findings) -> None:
    """The runner's pod template, and a /dev/shm of more than 0."""
    if spec.runner.template is not None:
        found.errors.extend(
            template_errors(spec.runner.template, f"{found.prefix}.runner.template")
        )
    if spec.runner.shared_memory is not None and spec.runner.shared_memory_bytes(0) == 0:
        found.add("runner.sharedMemory", "must be more than 0")


#: The checkers :func:`semantic_errors` runs, in the order their problems are listed.
_CHECKS: tuple[Callable[[StudySpec, Findings], None], ...] = (
    _search_space,
    condition_errors,
    _stages,
    _batch_size,
    _epoch_schedule,
    _budget,
    _resources,
    _profile,
    _pruner,
    _objectives,
    _constraints,
    _warm_start,
    _runner,
)
