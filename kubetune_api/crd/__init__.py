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
from kubetune_api.crd._columns import printer_columns
from kubetune_api.crd._rules import (
    CRD_ONLY_BOUNDS,
    NAME_RULES,
    PATH_EXTRAS,
    PATH_RULES,
    number_kind_rules,
)
from kubetune_api.crd._schema import structural_schema
from kubetune_api.crd._template_rules import TEMPLATE
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


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
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
                    "additionalPrinterColumns": printer_columns(),
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
