"""The HPOStudy CustomResourceDefinition, generated from the typed spec model.

``trial_runner.spec.StudySpec`` is the one source of truth: its JSON schema is turned into a
*structural* OpenAPI v3 schema (``$ref`` inlined, ``Optional`` fields simply not required,
``int | str`` as ``x-kubernetes-int-or-string``, free-form ``task.config`` preserved), and the
cross-field rules of ``trial_runner.spec.semantic_errors`` are mirrored as CEL
``x-kubernetes-validations`` placed on the object they concern, so the API server's message
names the field (``fieldPath``) just as the local validator does.

Regenerate the checked-in file with::

    python -m hpo_operator.crd > crds/kubetune.dev_hpostudies.yaml

A unit test fails when the file and this generator disagree.

The API server's CEL cost estimator needs bounds on every list and string a rule iterates
over; where the model has none, :data:`CRD_ONLY_BOUNDS` adds them (generous limits no real
study reaches).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from trial_runner.spec import KIND, MAX_STUDY_NAME, NAME_PATTERN, NUMBER_PATTERN, StudySpec

__all__ = [
    "CRD_ONLY_BOUNDS",
    "GROUP",
    "PLURAL",
    "SHORT_NAMES",
    "VERSION",
    "crd",
    "crd_yaml",
    "spec_schema",
    "status_schema",
]

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
PLURAL = "hpostudies"
SINGULAR = "hpostudy"
SHORT_NAMES = ["hpo", "hpos"]
NUMBER_MAX_LENGTH = 64

#: Bounds the CRD adds where the model has none, keyed by field path ("[]" = list items).
CRD_ONLY_BOUNDS: Mapping[str, Mapping[str, int]] = {
    # The model bounds string choices; int-or-string items carry no maxLength from the union.
    "searchSpace[].choices[]": {"maxLength": 253},
    "searchSpace[].default": {"maxLength": 253},
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

_STUDY_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.stages) || self.stages.all(s, s.groups.all(g, "
        "self.searchSpace.exists(p, p.group == g)))",
        "message": "every group a stage names must be the group of a searchSpace parameter",
        "fieldPath": ".stages",
    },
    {
        "rule": "!has(self.stages) || size(self.stages) == 0 "
        "|| self.stages.filter(s, !has(s.trials)).size() == 0 "
        "|| (self.stages.filter(s, !has(s.trials)).size() == 1 "
        "&& !has(self.stages[size(self.stages) - 1].trials))",
        "message": "trials is required on every stage but the last",
        "fieldPath": ".stages",
    },
    {
        "rule": "!has(self.stages) || self.searchSpace.all(p, "
        "self.stages.exists(s, p.group in s.groups))",
        "message": "every searchSpace group must be searched by some stage",
        "fieldPath": ".stages",
    },
    {
        "rule": "!has(self.stages) || size(self.stages) == 0 || self.searchSpace.all(p, "
        "p.group in self.stages[0].groups || has(p.default))",
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

_PATH_RULES: Mapping[str, list[dict[str, str]]] = {
    "": _STUDY_RULES,
    "searchSpace[]": _PARAMETER_RULES,
    "objective": [
        {
            "rule": "self == oldSelf",
            "message": "is immutable: the study's trials were scored against it",
        }
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

# Study names become pod names "<name>-runner-<n>" and label values: a short DNS label.
_NAME_RULES: list[dict[str, str]] = [
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

_PATH_EXTRAS: Mapping[str, Mapping[str, Any]] = {
    "searchSpace": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    "task.config": {"x-kubernetes-preserve-unknown-fields": True},
    # A set: the API server rejects a repeated choice (semantic_errors: "must not repeat").
    "searchSpace[].choices": {"x-kubernetes-list-type": "set"},
}


# --------------------------------------------------------------------------- spec schema


def _is_null(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "null"


def _structural(schema: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> dict[str, Any]:
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**target, **schema}
    if "anyOf" in schema:
        branches = [b for b in schema.pop("anyOf") if not _is_null(b)]
        if schema.get("default") is None:
            schema.pop("default", None)
        types = sorted(str(b.get("type")) for b in branches if "$ref" not in b)
        if len(branches) == 1:
            merged = {**branches[0], **{k: v for k, v in schema.items() if k != "type"}}
            return _structural(merged, defs, path)
        if types == ["integer", "string"]:
            out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
            string = next(b for b in branches if b.get("type") == "string")
            if "pattern" in string:
                out["pattern"] = string["pattern"]
            if string.get("pattern") == NUMBER_PATTERN:
                out["maxLength"] = NUMBER_MAX_LENGTH
            for key in ("description", "default"):
                if key in schema:
                    out[key] = schema[key]
            return _finish(out, path)
        raise ValueError(f"{path or 'spec'}: cannot express {branches} in a structural schema")

    out = {}
    if "description" in schema:
        out["description"] = schema["description"]
    kind = schema.get("type")
    if kind == "object":
        out["type"] = "object"
        properties = schema.get("properties") or {}
        if properties:
            out["properties"] = {
                name: _structural(sub, defs, f"{path}.{name}" if path else name)
                for name, sub in properties.items()
            }
            required = [r for r in schema.get("required", []) if r in properties]
            if required:
                out["required"] = required
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _structural(schema["items"], defs, f"{path}[]")
    elif kind in ("string", "integer", "boolean", "number"):
        out["type"] = kind
        if kind == "integer":
            out["format"] = "int64"
    elif kind is not None:
        raise ValueError(f"{path}: unsupported schema type {kind!r}")
    for key in (
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    ):
        if key in schema:
            out[key] = schema[key]
    if schema.get("pattern") == NUMBER_PATTERN and "maxLength" not in out:
        out["maxLength"] = NUMBER_MAX_LENGTH
    default = schema.get("default")
    if default is not None and not isinstance(default, dict | list):
        out["default"] = default
    return _finish(out, path)


def _finish(out: dict[str, Any], path: str) -> dict[str, Any]:
    out.update(copy.deepcopy(dict(_PATH_EXTRAS.get(path, {}))))
    out.update(CRD_ONLY_BOUNDS.get(path, {}))
    if path in _PATH_RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(_PATH_RULES[path])
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("properties", None)
    return out


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI schema of ``spec``, from :class:`StudySpec`."""
    raw = StudySpec.model_json_schema(by_alias=True)
    schema = _structural(raw, raw.get("$defs", {}), "")
    schema["description"] = (
        "Desired state of a hyperparameter study: what to optimise, the search space, the "
        "budget, and how runner pods are sized and how many run."
    )
    return schema


# --------------------------------------------------------------------------- status schema


def _int(description: str) -> dict[str, Any]:
    return {"type": "integer", "format": "int64", "description": description}


def _str(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def status_schema() -> dict[str, Any]:
    """The schema of ``status``: observations only, bounded in size."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {**_str("Ready, Succeeded, Failed or Suspended."), "maxLength": 64},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {**_str("CamelCase reason of the last transition."), "maxLength": 64},
            "message": {**_str("Human-readable details."), "maxLength": 4096},
            "lastTransitionTime": {
                **_str("When status last changed."),
                "format": "date-time",
            },
            "observedGeneration": _int("metadata.generation the condition was set for."),
        },
    }
    return {
        "type": "object",
        "description": "Observed state of the study, written by the operator.",
        "properties": {
            "observedGeneration": _int("metadata.generation the status describes."),
            "studyName": _str("Name of the Optuna study in the storage."),
            "conditions": {
                "type": "array",
                "maxItems": 16,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": condition,
            },
            "trials": {
                "type": "object",
                "description": "Trial counts by state.",
                "properties": {
                    "complete": _int("Trials that finished with a value."),
                    "pruned": _int("Trials stopped early by the pruner."),
                    "failed": _int("Trials that failed and were not retried."),
                    "running": _int("Trials running now."),
                    "waiting": _int("Trials queued for retry."),
                    "budget": _int("spec.budget.maxTrials as the runners see it."),
                },
            },
            "trialsSummary": _str("Finished trials of the budget, e.g. 12/50."),
            "best": {
                "type": "object",
                "description": "The best complete trial so far.",
                "properties": {
                    "value": _str("Objective value (as text: no floats in the API)."),
                    "trial": _int("Trial number."),
                    "params": {
                        "type": "object",
                        "description": "Parameters of the best trial, as text.",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
            "stage": {
                "type": "object",
                "properties": {
                    "current": _int("Current stage, from 1."),
                    "total": _int("Number of stages."),
                },
            },
            "runners": {
                "type": "object",
                "properties": {
                    "desired": _int("Runner pods the study wants now."),
                    "ready": _int("Runner pods running and ready."),
                    "active": _int("Runner pods pending or running."),
                    "failedPods": _int("Runner pods that failed since the spec changed."),
                },
            },
            "runnersSummary": _str("Ready runners of the desired, e.g. 2/2."),
            "sizing": {
                "type": "object",
                "description": "How runner pods are sized, and why.",
                "properties": {
                    "resource": _str("Resource each runner requests, e.g. nvidia.com/mig-2g.20gb."),
                    "quantity": _str("Quantity requested of the resource."),
                    "accelerator": {"type": "string", "enum": ["MIG", "GPU", "CPU"]},
                    "reason": _str("Why this resource (or why none fits)."),
                    "peakBytes": _int("Peak training memory of the largest configuration."),
                    "requiredBytes": _int("Peak plus headroom (and the floor after an OOM)."),
                    "memoryBytes": _int("Memory of the chosen resource."),
                    "floorBytes": _int("Least memory a runner needs after an OOMKilled one."),
                    "method": _str("Where peakBytes came from: Spec, FakeTensor, Analytic, ..."),
                    "estimateKey": _str("Digest of the spec the estimate was made for."),
                },
            },
            "startTime": {**_str("When the operator started the study."), "format": "date-time"},
            "completionTime": {
                **_str("When the study finished."),
                "format": "date-time",
                "nullable": True,
            },
        },
    }


# --------------------------------------------------------------------------- the CRD


def _column(
    name: str, path: str, type_: str = "string", priority: int = 0, description: str = ""
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    columns = [
        _column("Status", f"{ready}.reason", description="Reason of the Ready condition."),
        _column("Trials", ".status.trialsSummary", description="Finished trials of the budget."),
        _column("Pruned", ".status.trials.pruned", "integer"),
        _column("Failed", ".status.trials.failed", "integer"),
        _column("Best", ".status.best.value", description="Best objective value so far."),
        _column("Runners", ".status.runnersSummary", description="Ready of desired runners."),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Stage", ".status.stage.current", "integer", priority=1),
        _column("Best-Trial", ".status.best.trial", "integer", priority=1),
        _column("Resource", ".status.sizing.resource", priority=1),
        _column("Ready", f"{ready}.status", priority=1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "HPOStudy runs a hyperparameter search as a fleet of warm "
                                "trial-runner pods sharing one Optuna study."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": _NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML checked into ``crds/``."""
    header = (
        "# Generated by `python -m hpo_operator.crd` from trial_runner.spec.StudySpec.\n"
        "# Do not edit by hand: change the model (or operator/crd.py) and regenerate.\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(crd_yaml())


if __name__ == "__main__":
    main()
