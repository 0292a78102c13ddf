"""Rules and bounds the spec model cannot carry, added to the generated spec schema.

* CEL ``x-kubernetes-validations`` mirroring ``kubetune_api.spec.semantic_errors``, placed on
  the object they concern so the API server's message names the field (``fieldPath``);
* bounds the API server's CEL cost estimator needs where the model has none
  (:data:`CRD_ONLY_BOUNDS`: generous limits no real study reaches);
* list types and preserved free-form fields (:data:`PATH_EXTRAS`).

The rules themselves live by topic: :mod:`._study_rules` (the spec object and its parameters)
and :mod:`._template_rules` (the runner pod template); this module places them by path.

Keys are field paths of the spec (``""`` is ``spec`` itself, ``[]`` a list's items).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune_api.crd._study_rules import (
    CONDITION_RULES,
    CONSTRAINT_ITEM_RULES,
    CONSTRAINT_RULES,
    OBJECTIVE_RULES,
    PARAMETER_RULES,
    STUDY_RULES,
    WARM_START_RULES,
)
from kubetune_api.crd._template_rules import TEMPLATE, TEMPLATE_EXTRAS, TEMPLATE_RULES
from kubetune_api.spec import (
    FREE_FORM_FIELDS,
    MAX_MOUNT_PATH,
    MAX_STUDY_NAME,
    MAX_VOLUME_NAME,
    NAME_PATTERN,
)

__all__ = [
    "CRD_ONLY_BOUNDS",
    "NAME_RULES",
    "PATH_EXTRAS",
    "PATH_RULES",
    "number_kind_rules",
]

#: Bounds the CRD adds where the model has none, keyed by field path ("[]" = list items).
CRD_ONLY_BOUNDS: Mapping[str, Mapping[str, int]] = {
    # The model bounds string choices; int-or-string items carry no maxLength from the union.
    "searchSpace[].choices[]": {"maxLength": 253},
    "searchSpace[].default": {"maxLength": 253},
    "searchSpace[].when.in[]": {"maxLength": 253},
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


PATH_RULES: Mapping[str, list[dict[str, str]]] = {
    **{f"{TEMPLATE}.{path}": rules for path, rules in TEMPLATE_RULES.items()},
    "": [
        *STUDY_RULES,
        *CONDITION_RULES,
        *OBJECTIVE_RULES,
        *CONSTRAINT_RULES,
        *WARM_START_RULES,
    ],
    "constraints[]": CONSTRAINT_ITEM_RULES,
    "searchSpace[]": PARAMETER_RULES,
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
    **{f"{TEMPLATE}.{path}": extras for path, extras in TEMPLATE_EXTRAS.items()},
    "searchSpace": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    # Lists of named items: the API server rejects a repeated metric or parameter name.
    "objectives": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]},
    "constraints": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]},
    "warmStart.points[].params": {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    },
    **{".".join(path): {"x-kubernetes-preserve-unknown-fields": True} for path in FREE_FORM_FIELDS},
    # A set: the API server rejects a repeated choice (semantic_errors: "must not repeat").
    "searchSpace[].choices": {"x-kubernetes-list-type": "set"},
    "searchSpace[].when.in": {"x-kubernetes-list-type": "set"},
}
