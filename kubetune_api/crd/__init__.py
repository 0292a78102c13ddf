"""The HPOStudy CustomResourceDefinition, generated from the typed models.

``kubetune_api.spec.StudySpec`` generates the spec schema and
:class:`kubetune_api.status.StudyStatus` the status schema, each turned into a *structural*
OpenAPI v3 schema (:mod:`._schema`). The spec schema also carries the CEL rules, bounds and
list types of :mod:`._rules`, so a spec that validates locally validates at apply time and the
API server's messages name the field.

Regenerate the checked-in files with::

    python -m kubetune_api.crd > crds/kubetune.dev_hpostudies.yaml
    cp crds/kubetune.dev_hpostudies.yaml charts/kubetune/crds/

Unit tests fail when the files and this generator disagree.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from kubetune_api.contract import GROUP, KIND, PLURAL, VERSION
from kubetune_api.crd._rules import (
    CRD_ONLY_BOUNDS,
    NAME_RULES,
    PATH_EXTRAS,
    PATH_RULES,
    TEMPLATE,
    number_kind_rules,
)
from kubetune_api.crd._schema import structural_schema
from kubetune_api.spec import StudySpec, dump_yaml, template_json_schema
from kubetune_api.status import StudyStatus

__all__ = [
    "CRD_ONLY_BOUNDS",
    "SHORT_NAMES",
    "crd",
    "crd_yaml",
    "spec_schema",
    "status_schema",
]

SINGULAR = "hpostudy"
SHORT_NAMES = ["hpo", "hpos"]


def _decorate_spec(node: dict[str, Any], path: str) -> dict[str, Any]:
    if path == TEMPLATE:
        # The Kubernetes API's own objects, from the models the template is validated with.
        template = structural_schema(template_json_schema(), _decorate_template)
        return {**template, "description": node["description"]}
    node.update(copy.deepcopy(dict(PATH_EXTRAS.get(path, {}))))
    node.update(CRD_ONLY_BOUNDS.get(path, {}))
    rules = [*copy.deepcopy(PATH_RULES.get(path, [])), *number_kind_rules(node)]
    if rules:
        node["x-kubernetes-validations"] = rules
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("properties", None)
    return node


def _decorate_template(node: dict[str, Any], path: str) -> dict[str, Any]:
    full = f"{TEMPLATE}.{path}" if path else TEMPLATE
    node.update(copy.deepcopy(dict(PATH_EXTRAS.get(full, {}))))
    node.update(CRD_ONLY_BOUNDS.get(full, {}))
    rules = copy.deepcopy(PATH_RULES.get(full, []))
    if rules:
        node["x-kubernetes-validations"] = rules
    return node


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI schema of ``spec``, from :class:`StudySpec`."""
    schema = structural_schema(StudySpec.model_json_schema(by_alias=True), _decorate_spec)
    schema["description"] = (
        "Desired state of a hyperparameter study: what to optimise, the search space, the "
        "budget, and how runner pods are sized and how many run."
    )
    return schema


def status_schema() -> dict[str, Any]:
    """The structural OpenAPI schema of ``status``, from :class:`StudyStatus`."""
    return structural_schema(StudyStatus.model_json_schema(by_alias=True), lambda node, _path: node)


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
        _column(
            "Front",
            ".status.paretoFront.size",
            "integer",
            description="Trials on the Pareto front (studies with several objectives).",
        ),
        _column("Runners", ".status.runnersSummary", description="Ready of desired runners."),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Stage", ".status.stage.current", "integer", priority=1),
        _column("Best-Trial", ".status.best.trial", "integer", priority=1),
        _column("Resource", ".status.sizing.resource", priority=1),
        _column(
            "Overhead",
            ".status.telemetry.overheadSeconds",
            priority=1,
            description="Mean seconds of a finished trial that were not training or validation.",
        ),
        _column(
            "Packing",
            ".status.telemetry.trialsPerProcess",
            priority=1,
            description="Finished trials per warm runner process.",
        ),
        _column(
            "Per-Device",
            ".status.sizing.trialsPerDevice",
            "integer",
            priority=1,
            description="Runner processes (trials) each runner pod runs on its device.",
        ),
        _column(
            "Device-Use",
            ".status.sizing.packing",
            priority=1,
            description="Estimated peak memory x trials per device / the device's memory.",
        ),
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
                            "x-kubernetes-validations": NAME_RULES,
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
        "# Generated by `python -m kubetune_api.crd` from kubetune_api.spec.StudySpec and\n"
        "# kubetune_api.status.StudyStatus.\n"
        "# Do not edit by hand: change the models (or kubetune_api/crd/) and regenerate.\n"
    )
    return header + dump_yaml(crd())


def main() -> None:
    sys.stdout.write(crd_yaml())
