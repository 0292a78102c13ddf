"""Rules and bounds the spec model cannot carry, added to the generated spec schema.

* CEL ``x-kubernetes-validations`` mirroring ``kubetune_api.spec.semantic_errors``, placed on
  the object they concern so the API server's message names the field (``fieldPath``);
* bounds the API server's CEL cost estimator needs where the model has none
  (:data:`CRD_ONLY_BOUNDS`: generous limits no real study reaches);
* list types and preserved free-form fields (:data:`PATH_EXTRAS`).

Keys are field paths of the spec (``""`` is ``spec`` itself, ``[]`` a list's items).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_api.contract import (
    OWNED_ANNOTATIONS,
    OWNED_ENV,
    OWNED_LABELS,
    OWNED_RESOURCES,
    RUNNER_CONTAINER,
    SHM_VOLUME,
    TMP_VOLUME,
)
from kubetune_api.spec import (
    FREE_FORM_FIELDS,
    MAX_MOUNT_PATH,
    MAX_STAGES,
    MAX_STUDY_NAME,
    MAX_TEMPLATE_ITEMS,
    MAX_VOLUME_NAME,
    MULTI_OBJECTIVE_SAMPLERS,
    NAME_PATTERN,
    OWNED_MOUNT_PATTERN,
)

__all__ = [
    "CRD_ONLY_BOUNDS",
    "NAME_RULES",
    "PATH_EXTRAS",
    "PATH_RULES",
    "TEMPLATE",
    "number_kind_rules",
]

#: Path of the runner pod template (``spec.runner.template``); below it the Kubernetes API's
#: own objects, checked by their schema (no number-kind rules: see :func:`number_kind_rules`).
TEMPLATE = "runner.template"

#: Bounds the CRD adds where the model has none, keyed by field path ("[]" = list items).
CRD_ONLY_BOUNDS: Mapping[str, Mapping[str, int]] = {
    # The model bounds string choices; int-or-string items carry no maxLength from the union.
    "searchSpace[].choices[]": {"maxLength": 253},
    "searchSpace[].default": {"maxLength": 253},
    "warmStart.points[].params[].value": {"maxLength": 253},
    # Names and paths the template's rules read (the model checks the same lengths).
    **{
        f"runner.template.spec.{path}": {"maxLength": limit}
        for path, limit in (
            ("volumes[].name", MAX_VOLUME_NAME),
            ("containers[].volumeMounts[].name", MAX_VOLUME_NAME),
            ("containers[].volumeMounts[].mountPath", MAX_MOUNT_PATH),
        )
    },
}

# NUMBER_PATTERN without backslashes, so it can sit in a CEL string literal.
_CEL_NUMBER = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"

# CEL helpers: int-or-string numbers compare as doubles.
_PARAMETER_RULES: list[dict[str, str]] = [
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


_STUDY_RULES: list[dict[str, str]] = [
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

# One objective or several; several rule out CMA-ES and pruning (Optuna supports neither).
_OBJECTIVE_RULES: list[dict[str, str]] = [
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
        "rule": "!has(self.objectives) || !has(self.pruner) || self.pruner.type == 'Nop'",
        "message": "must be Nop with several objectives: Optuna cannot prune a multi-objective "
        "trial (a pruner compares one intermediate value)",
        "fieldPath": ".pruner.type",
    },
    {
        "rule": "!has(self.objectives) || !has(self.pruner) || !has(self.pruner.patience)",
        "message": "not accepted with several objectives (nothing is pruned)",
        "fieldPath": ".pruner.patience",
    },
]

# Points name searchSpace parameters of the first stage's groups; they and fromStudy.topK fit
# in the budget. Their values are checked by the spec model only (kubetune validate, the
# operator's InvalidSpec condition): a CEL rule over every value of every point exceeds the
# API server's cost budget.
_WARM_START_RULES: list[dict[str, str]] = [
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


def _owned_keys_rule(owned: tuple[str, ...], what: str) -> dict[str, str]:
    """Map keys none of which is ``owned`` (a prefix ends with "/"), as ``is_owned`` says."""
    tests = " || ".join(f"k.startsWith('{o}')" if o.endswith("/") else f"k == '{o}'" for o in owned)
    listed = ", ".join(f"{o}*" if o.endswith("/") else o for o in owned)
    return {"rule": f"self.all(k, !({tests}))", "message": f"{what} set by kubetune ({listed})"}


def _quoted(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


#: Rules of the runner pod template, mirroring ``kubetune_api.spec`` ``ownership_errors``.
_TEMPLATE_RULES: dict[str, list[dict[str, str]]] = {
    "metadata.labels": [_owned_keys_rule(OWNED_LABELS, "labels")],
    "metadata.annotations": [_owned_keys_rule(OWNED_ANNOTATIONS, "annotations")],
    "spec": [
        {
            "rule": "!has(self.containers) || self.containers.all(c, !has(c.volumeMounts) || "
            "c.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, "
            "v.name == m.name)))",
            "message": "every volume mount of the runner container names a volume of spec.volumes",
            "fieldPath": ".containers",
        }
    ],
    "spec.volumes[]": [
        {
            "rule": f"!(self.name in {_quoted((TMP_VOLUME, SHM_VOLUME))})",
            "message": "is kubetune's own volume",
            "fieldPath": ".name",
        }
    ],
    "spec.initContainers[]": [
        {
            "rule": f"self.name != '{RUNNER_CONTAINER}'",
            "message": "is the runner container's name",
            "fieldPath": ".name",
        },
        {
            "rule": "!has(self.securityContext)",
            "message": "set by kubetune (the restricted security context)",
            "fieldPath": ".securityContext",
        },
    ],
    "spec.containers[].env[]": [
        {
            "rule": f"!(self.name in {_quoted(OWNED_ENV)})",
            "message": "is set by kubetune",
            "fieldPath": ".name",
        }
    ],
    "spec.containers[].volumeMounts[]": [
        {
            "rule": f"!self.mountPath.matches('{OWNED_MOUNT_PATTERN}')",
            "message": "is mounted by kubetune",
            "fieldPath": ".mountPath",
        }
    ],
    **{
        f"spec.containers[].resources.{field}": [
            _owned_keys_rule(OWNED_RESOURCES, "sized by kubetune: resources")
        ]
        for field in ("requests", "limits")
    },
}

_NAMED_LIST = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
#: List types and bounds of the template: named lists reject a repeated name, as the Pod API
#: does, and maps are bounded like the model's lists, for the CEL cost estimate.
_TEMPLATE_EXTRAS: dict[str, dict[str, Any]] = {
    "spec.volumes": _NAMED_LIST,
    "spec.initContainers": _NAMED_LIST,
    "spec.containers": _NAMED_LIST,
    "spec.containers[].env": _NAMED_LIST,
    **{
        path: {"maxProperties": MAX_TEMPLATE_ITEMS}
        for path in (
            "metadata.labels",
            "metadata.annotations",
            "spec.nodeSelector",
            "spec.containers[].resources.requests",
            "spec.containers[].resources.limits",
        )
    },
}

PATH_RULES: Mapping[str, list[dict[str, str]]] = {
    **{f"{TEMPLATE}.{path}": rules for path, rules in _TEMPLATE_RULES.items()},
    "": [*_STUDY_RULES, *_OBJECTIVE_RULES, *_WARM_START_RULES],
    "searchSpace[]": _PARAMETER_RULES,
    "objective": [
        {
            "rule": "self == oldSelf",
            "message": "is immutable: the study's trials were scored against it",
        }
    ],
    "objectives": [
        {
            "rule": "self == oldSelf",
            "message": "is immutable: the study's trials were scored against them",
        }
    ],
    "budget": [
        {
            "rule": "!has(self.timeout) || self.timeout.matches('[1-9]')",
            "message": "must be longer than 0",
            "fieldPath": ".timeout",
        },
        {
            "rule": "!has(self.trialTimeout) || self.trialTimeout.matches('[1-9]')",
            "message": "must be longer than 0",
            "fieldPath": ".trialTimeout",
        },
        {
            "rule": "!has(self.stallTimeout) || self.stallTimeout == 'Auto' "
            "|| self.stallTimeout.matches('[1-9]')",
            "message": "must be Auto or longer than 0",
            "fieldPath": ".stallTimeout",
        },
    ],
    "sampler": [
        {
            "rule": "!has(self.populationSize) || self.type in ['NSGAII', 'NSGAIII']",
            "message": "only used by the NSGAII and NSGAIII samplers",
            "fieldPath": ".populationSize",
        }
    ],
    "warmStart": [
        {
            "rule": "has(self.points) || has(self.fromStudy)",
            "message": "set points, fromStudy or both",
        }
    ],
    "warmStart.fromStudy": [
        {
            "rule": "has(self.hpoStudy) != has(self.studyName)",
            "message": "set exactly one of hpoStudy and studyName",
        },
        {
            "rule": "self.mode != 'Reevaluate' || has(self.topK)",
            "message": "required when mode is Reevaluate",
            "fieldPath": ".topK",
        },
        {
            "rule": "self.mode != 'AddTrials' || !has(self.topK)",
            "message": "only used when mode is Reevaluate",
            "fieldPath": ".topK",
        },
    ],
    "resources": [
        {
            "rule": "!has(self.memoryHeadroom) || (double(self.memoryHeadroom) >= 0.0 "
            "&& double(self.memoryHeadroom) <= 4.0)",
            "message": "must be between 0 and 4",
            "fieldPath": ".memoryHeadroom",
        }
    ],
    "pruner": [
        {
            "rule": "!has(self.percentile) || (double(self.percentile) >= 0.0 "
            "&& double(self.percentile) <= 100.0)",
            "message": "must be between 0 and 100",
            "fieldPath": ".percentile",
        },
        {
            "rule": "!has(self.pThreshold) || (double(self.pThreshold) > 0.0 "
            "&& double(self.pThreshold) <= 1.0)",
            "message": "must be in (0, 1]",
            "fieldPath": ".pThreshold",
        },
        {
            "rule": "!has(self.type) || self.type != 'Percentile' || has(self.percentile)",
            "message": "required when type is Percentile",
            "fieldPath": ".percentile",
        },
        {
            "rule": "!has(self.minResource) || !has(self.maxResource) "
            "|| self.minResource < self.maxResource",
            "message": "must be above minResource",
            "fieldPath": ".maxResource",
        },
        {
            "rule": "!has(self.minDelta) || has(self.patience)",
            "message": "only used with patience: set pruner.patience too",
            "fieldPath": ".minDelta",
        },
    ],
    "training.profile": [
        {
            "rule": "!has(self.trials) || self.trials != 'EveryN' || has(self.every)",
            "message": "required when trials is EveryN",
            "fieldPath": ".every",
        },
        {
            "rule": "!has(self.every) || (has(self.trials) && self.trials == 'EveryN')",
            "message": "only used with trials: EveryN",
            "fieldPath": ".every",
        },
    ],
    "training.epochSchedule": [
        {
            "rule": "size(self) == 0 || self[0].fromTrial == 0",
            "message": "the first entry's fromTrial must be 0 so every trial has an epoch count",
        },
        {
            "rule": "self.map(e, e.fromTrial).isSorted() && self.all(a, "
            "self.filter(b, b.fromTrial == a.fromTrial).size() == 1)",
            "message": "fromTrial must strictly increase",
        },
    ],
}


def number_kind_rules(node: Mapping[str, Any]) -> list[dict[str, str]]:
    """A rule that refuses a float where an integer (or a number as text) goes.

    The API server's schema check takes a whole float (``10.0``, as JSON from most clients) for
    an integer, but its CEL rules fail on one, so whether such a spec was accepted depended on
    whether a rule read the field. Every integer field reads itself: a float is never an
    integer, as in the spec model (kubectl sends YAML's ``10.0`` as ``10`` anyway).
    """
    if node.get("type") == "integer":
        return [{"rule": "type(self) == int", "message": "must be an integer (not a float)"}]
    if node.get("x-kubernetes-int-or-string"):
        return [
            {
                "rule": "type(self) == int || type(self) == string",
                "message": "must be an integer or a string (not a float)",
            }
        ]
    return []


# Study names become pod names "<name>-runner-<n>" and label values: a short DNS label.
NAME_RULES: list[dict[str, str]] = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_STUDY_NAME}",
        "message": f"metadata.name: at most {MAX_STUDY_NAME} characters, so runner pod names fit",
    },
    {
        "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
        "message": "metadata.name: must be a DNS label (lowercase letters, digits and '-', "
        "no dots)",
    },
]

PATH_EXTRAS: Mapping[str, Mapping[str, Any]] = {
    **{f"{TEMPLATE}.{path}": extras for path, extras in _TEMPLATE_EXTRAS.items()},
    "searchSpace": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    # Lists of named items: the API server rejects a repeated metric or parameter name.
    "objectives": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]},
    "warmStart.points[].params": {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    },
    **{".".join(path): {"x-kubernetes-preserve-unknown-fields": True} for path in FREE_FORM_FIELDS},
    # A set: the API server rejects a repeated choice (semantic_errors: "must not repeat").
    "searchSpace[].choices": {"x-kubernetes-list-type": "set"},
}
