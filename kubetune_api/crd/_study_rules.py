"""CEL rules on the spec object itself and its search-space parameters, mirroring
``kubetune_api.spec.semantic_errors``: parameters, stages, batch size, objectives, warm start."""

from __future__ import annotations

from kubetune_api.spec import (
    CONSTRAINED_SAMPLERS,
    MAX_PARAMETERS,
    MAX_STAGES,
    MULTI_OBJECTIVE_SAMPLERS,
)

__all__ = [
    "CONDITION_RULES",
    "CONSTRAINT_ITEM_RULES",
    "CONSTRAINT_RULES",
    "OBJECTIVE_RULES",
    "PARAMETER_RULES",
    "STUDY_RULES",
    "WARM_START_RULES",
]

# NUMBER_PATTERN without backslashes, so it can sit in a CEL string literal.
_CEL_NUMBER = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"


def _int_like(field: str) -> str:
    """CEL: parameter field ``field`` is an integer of at most 18 digits, or a string of one
    (``int()`` reads it, and differences of two cannot overflow). Longer ones are not checked,
    here or by ``kubetune validate`` (:data:`~kubetune_api.spec._parameter_rules.GRID_INTEGER`)."""
    return f"string(self.{field}).matches('^[-+]?[0-9]{{1,18}}$')"


# CEL helpers: int-or-string numbers compare as doubles.
PARAMETER_RULES: list[dict[str, str]] = [
    {
        "rule": "self.type != 'Categorical' || (has(self.choices) && size(self.choices) > 0)",
        "message": "required and non-empty for a Categorical parameter",
        "fieldPath": ".choices",
    },
    {
        "rule": "self.type == 'Categorical' || !has(self.choices)",
        "message": "not accepted for a Float or Int parameter (use low and high)",
        "fieldPath": ".choices",
    },
    {
        "rule": "self.type != 'Categorical' || (!has(self.low) && !has(self.high) "
        "&& !has(self.step))",
        "message": "low, high and step are not accepted for a Categorical parameter (use choices)",
        "fieldPath": ".type",
    },
    {
        "rule": "self.type != 'Categorical' || !has(self.scale) || self.scale == 'Linear'",
        "message": "not accepted for a Categorical parameter",
        "fieldPath": ".scale",
    },
    {
        "rule": "self.type == 'Categorical' || (has(self.low) && has(self.high))",
        "message": "low and high are required for a Float or Int parameter",
        "fieldPath": ".type",
    },
    {
        "rule": "!has(self.low) || !has(self.high) || double(self.low) < double(self.high)",
        "message": "must be below high",
        "fieldPath": ".low",
    },
    {
        "rule": "!has(self.scale) || self.scale != 'Log' || !has(self.low) "
        "|| double(self.low) > 0.0",
        "message": "must be above 0 with scale Log",
        "fieldPath": ".low",
    },
    {
        "rule": "self.type != 'Int' || ((!has(self.low) || type(self.low) == int "
        "|| string(self.low).matches('^[-+]?[0-9]+$')) && (!has(self.high) "
        "|| type(self.high) == int || string(self.high).matches('^[-+]?[0-9]+$')))",
        "message": "low and high must be integers for an Int parameter",
        "fieldPath": ".type",
    },
    {
        "rule": "self.type != 'Int' || !has(self.step) || type(self.step) == int "
        "|| string(self.step).matches('^[-+]?[0-9]+$')",
        "message": "must be an integer for an Int parameter",
        "fieldPath": ".step",
    },
    {
        "rule": "self.type != 'Int' || !has(self.default) || type(self.default) == int "
        "|| string(self.default).matches('^[-+]?[0-9]+$')",
        "message": "must be an integer for an Int parameter",
        "fieldPath": ".default",
    },
    {
        "rule": "!has(self.step) || double(self.step) > 0.0",
        "message": "must be above 0",
        "fieldPath": ".step",
    },
    {
        "rule": f"self.type != 'Int' || !has(self.step) || !has(self.low) || !has(self.high) "
        f"|| !({_int_like('step')} && {_int_like('low')} && {_int_like('high')}) "
        "|| int(self.step) <= 0 || int(self.low) >= int(self.high) "
        "|| (int(self.high) - int(self.low)) % int(self.step) == 0",
        "message": "must divide high - low: Optuna would narrow the range to the last point "
        "of the grid",
        "fieldPath": ".step",
    },
    {
        "rule": f"self.type != 'Int' || !has(self.step) || !has(self.low) "
        f"|| !has(self.default) "
        f"|| !({_int_like('step')} && {_int_like('low')} && {_int_like('default')}) "
        "|| int(self.step) <= 0 || int(self.default) < int(self.low) "
        "|| (int(self.default) - int(self.low)) % int(self.step) == 0",
        "message": "must be low plus a multiple of step",
        "fieldPath": ".default",
    },
    {
        "rule": "!has(self.step) || !has(self.scale) || self.scale != 'Log'",
        "message": "not accepted with scale Log",
        "fieldPath": ".step",
    },
    {
        "rule": "self.type == 'Categorical' || !has(self.default) || type(self.default) == int "
        f"|| string(self.default).matches('{_CEL_NUMBER}')",
        "message": "must be a number for a Float or Int parameter",
        "fieldPath": ".default",
    },
    {
        "rule": "self.type == 'Categorical' || !has(self.default) || !has(self.low) "
        "|| !has(self.high) || !(type(self.default) == int "
        f"|| string(self.default).matches('{_CEL_NUMBER}')) "
        "|| (double(self.default) >= double(self.low) "
        "&& double(self.default) <= double(self.high))",
        "message": "must lie within [low, high]",
        "fieldPath": ".default",
    },
    {
        "rule": "self.type != 'Categorical' || !has(self.default) || !has(self.choices) "
        "|| self.default in self.choices",
        "message": "must be one of the choices",
        "fieldPath": ".default",
    },
]

# Whether every group each stage names is a searchSpace parameter's group.
_KNOWN_GROUPS = "self.stages.all(s, s.groups.all(g, self.searchSpace.exists(p, p.group == g)))"


def _stage_groups_rule(index: int) -> dict[str, str]:
    """Stage ``index`` names only groups of the search space; the message names the stage and
    an unknown group (a rule per stage: CEL has no index to name, and fieldPath takes none)."""
    stage = f"self.stages[{index}]"
    # The first unknown group: joining them all exceeds the API server's cost budget.
    unknown = f"{stage}.groups.filter(g, !self.searchSpace.exists(p, p.group == g))[0]"
    return {
        "rule": f"!has(self.stages) || size(self.stages) <= {index} "
        f"|| {stage}.groups.all(g, self.searchSpace.exists(p, p.group == g))",
        "messageExpression": f'"stages[{index}].groups: unknown group \'" + {unknown} '
        '+ "\' (not the group of any searchSpace parameter)"',
        "fieldPath": ".stages",
    }


STUDY_RULES: list[dict[str, str]] = [
    *(_stage_groups_rule(index) for index in range(MAX_STAGES)),
    {
        "rule": "!has(self.stages) || size(self.stages) == 0 "
        "|| self.stages.filter(s, !has(s.trials)).size() == 0 "
        "|| (self.stages.filter(s, !has(s.trials)).size() == 1 "
        "&& !has(self.stages[size(self.stages) - 1].trials))",
        "message": "trials is required on every stage but the last",
        "fieldPath": ".stages",
    },
    # These two follow from a misspelt group too: only the misspelling is reported then.
    {
        "rule": f"!has(self.stages) || !{_KNOWN_GROUPS} || self.searchSpace.all(p, "
        "self.stages.exists(s, p.group in s.groups))",
        "message": "every searchSpace group must be searched by some stage",
        "fieldPath": ".stages",
    },
    {
        "rule": f"!has(self.stages) || size(self.stages) == 0 || !{_KNOWN_GROUPS} "
        "|| self.searchSpace.all(p, p.group in self.stages[0].groups || has(p.default))",
        "message": "a parameter whose group is not searched in the first stage needs a default",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": "!has(self.stages) || self.stages.all(a, !has(a.name) "
        "|| self.stages.filter(b, has(b.name) && b.name == a.name).size() == 1)",
        "message": "stage names must be unique",
        "fieldPath": ".stages",
    },
    {
        "rule": "!has(self.stages) || size(self.stages) == 0 || self.budget.maxTrials >= "
        "self.stages.map(s, has(s.trials) ? s.trials : 0).sum() "
        "+ (has(self.stages[size(self.stages) - 1].trials) ? 0 : 1)",
        "message": "must cover the stages' trials",
        "fieldPath": ".budget.maxTrials",
    },
    {
        "rule": "self.searchSpace.all(p, p.name != (has(self.training) "
        "&& has(self.training.batchSizeParameter) ? self.training.batchSizeParameter "
        ": 'batch_size') || p.type != 'Float')",
        "message": "the batch size parameter (training.batchSizeParameter) must be Int or "
        "Categorical",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": "self.searchSpace.all(p, p.name != (has(self.training) "
        "&& has(self.training.batchSizeParameter) ? self.training.batchSizeParameter "
        ": 'batch_size') || p.type != 'Categorical' || !has(p.choices) "
        "|| p.choices.all(c, type(c) == int && int(c) > 0))",
        "message": "batch sizes (choices of training.batchSizeParameter) must be positive integers",
        "fieldPath": ".searchSpace",
    },
]

# One objective or several; several rule out CMA-ES and every pruner but MOASHA, which
# takes nothing else.
OBJECTIVE_RULES: list[dict[str, str]] = [
    {
        "rule": "!(has(self.objective) && has(self.objectives))",
        "message": "mutually exclusive with spec.objective: give one objective, or a list of "
        "several in objectives",
        "fieldPath": ".objectives",
    },
    {
        "rule": "has(self.objective) || has(self.objectives)",
        "message": "required: one objective, or a list of several in spec.objectives",
        "fieldPath": ".objective",
    },
    {
        "rule": "has(self.objectives) == has(oldSelf.objectives)",
        "message": "cannot switch between objective and objectives: the study's trials were "
        "scored against them",
        "fieldPath": ".objectives",
    },
    {
        "rule": "!has(self.objectives) || !has(self.sampler) || self.sampler.type in "
        f"{list(MULTI_OBJECTIVE_SAMPLERS)}",
        "message": "this sampler cannot optimise several objectives; use one of "
        f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
        "fieldPath": ".sampler.type",
    },
    {
        "rule": "!has(self.objectives) || !has(self.pruner) || !has(self.pruner.type) "
        "|| self.pruner.type in ['Nop', 'MOASHA']",
        "message": "must be Nop or MOASHA with several objectives: the other pruners compare "
        "one intermediate value",
        "fieldPath": ".pruner.type",
    },
    {
        "rule": "has(self.objectives) || !has(self.pruner) || !has(self.pruner.type) "
        "|| self.pruner.type != 'MOASHA'",
        "message": "MOASHA prunes studies of several objectives (spec.objectives); with one "
        "objective use SuccessiveHalving",
        "fieldPath": ".pruner.type",
    },
    {
        "rule": "!has(self.objectives) || !has(self.pruner) || !has(self.pruner.patience)",
        "message": "not accepted with several objectives (PatientPruner takes one)",
        "fieldPath": ".pruner.patience",
    },
]

# Points name searchSpace parameters of the first stage's groups; they and fromStudy.topK fit
# in the budget. Their values are checked by the spec model only (kubetune validate, the
# operator's InvalidSpec condition): a CEL rule over every value of every point exceeds the
# API server's cost budget.
WARM_START_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.warmStart) || !has(self.warmStart.points) || "
        "self.warmStart.points.all(pt, pt.params.all(v, "
        "self.searchSpace.exists(p, p.name == v.name)))",
        "message": "every parameter of a point must be a searchSpace parameter",
        "fieldPath": ".warmStart.points",
    },
    {
        "rule": "!has(self.warmStart) || !has(self.warmStart.points) || !has(self.stages) "
        "|| size(self.stages) == 0 || self.warmStart.points.all(pt, pt.params.all(v, "
        "self.searchSpace.all(p, p.name != v.name || p.group in self.stages[0].groups)))",
        "message": "a point may set only parameters the first stage searches: points are "
        "the first stage's first trials",
        "fieldPath": ".warmStart.points",
    },
    {
        "rule": "!has(self.warmStart) || ((has(self.warmStart.points) ? "
        "size(self.warmStart.points) : 0) + (has(self.warmStart.fromStudy) "
        "&& has(self.warmStart.fromStudy.topK) ? self.warmStart.fromStudy.topK : 0)) <= "
        "(has(self.stages) && size(self.stages) > 0 && has(self.stages[0].trials) "
        "&& self.stages[0].trials < self.budget.maxTrials ? self.stages[0].trials "
        ": self.budget.maxTrials)",
        "message": "points and fromStudy.topK must fit in budget.maxTrials (and in "
        "stages[0].trials)",
        "fieldPath": ".warmStart",
    },
]


#: CEL: the indexes a search space may have, a literal list (CEL has no range; a list of names
#: built with ``map`` has no size bound the API server's cost estimator can see).
_INDEXES = f"[{', '.join(str(i) for i in range(MAX_PARAMETERS))}]"
_ORDER_RULE = (
    f"{_INDEXES}.all(i, i >= size(self.searchSpace) || !has(self.searchSpace[i].when) "
    "|| !self.searchSpace.exists(x, x.name == self.searchSpace[i].when.parameter) "
    f"|| {_INDEXES}.exists(k, k < i "
    "&& self.searchSpace[k].name == self.searchSpace[i].when.parameter))"
)


# Conditional parameters (searchSpace[].when), mirroring kubetune_api.spec._condition_rules.
# The values of ``in`` are checked by the spec model only (kubetune validate, the operator's
# InvalidSpec condition): a CEL rule over every value against every choice of the parameter
# it names exceeds the API server's cost budget, as for warm-start points' values.
CONDITION_RULES: list[dict[str, str]] = [
    {
        "rule": "self.searchSpace.all(p, !has(p.when) "
        "|| self.searchSpace.exists(x, x.name == p.when.parameter))",
        "message": "when.parameter must name a searchSpace parameter",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": _ORDER_RULE,
        "message": "when.parameter must name a parameter listed before its own: conditions "
        "follow the order of searchSpace",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": "self.searchSpace.all(p, !has(p.when) "
        "|| self.searchSpace.all(q, q.name != p.when.parameter || q.type != 'Float'))",
        "message": "when.parameter must name a Categorical or Int parameter",
        "fieldPath": ".searchSpace",
    },
    {
        "rule": "self.searchSpace.all(p, !has(p.when) || p.name != (has(self.training) "
        "&& has(self.training.batchSizeParameter) ? self.training.batchSizeParameter "
        ": 'batch_size'))",
        "message": "the batch size parameter (training.batchSizeParameter) cannot be "
        "conditional: every trial needs one",
        "fieldPath": ".searchSpace",
    },
]

# Constraints (spec.constraints), mirroring the spec model's _constraints.
CONSTRAINT_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.constraints) || !has(self.sampler) || !has(self.sampler.type) "
        f"|| self.sampler.type in {list(CONSTRAINED_SAMPLERS)}",
        "message": "this sampler takes no constraints (spec.constraints); use one of "
        f"{', '.join(CONSTRAINED_SAMPLERS)}",
        "fieldPath": ".sampler.type",
    },
]

#: Rules on each constraint (``constraints[]``).
CONSTRAINT_ITEM_RULES: list[dict[str, str]] = [
    {
        "rule": "has(self.max) || has(self.min)",
        "message": "set max, min or both: a constraint bounds its metric",
    },
    {
        "rule": "!has(self.max) || !has(self.min) || double(self.min) <= double(self.max)",
        "message": "must not be above max",
        "fieldPath": ".min",
    },
]
