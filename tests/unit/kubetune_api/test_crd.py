"""The checked-in CRD is the generator's output, and its schema says what the model says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.crd import CRD_ONLY_BOUNDS, crd, crd_yaml, spec_schema, status_schema
from kubetune_api.spec import MULTI_OBJECTIVE_SAMPLERS, StudySpec, template_json_schema
from kubetune_api.status import StudyStatus

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "kubetune.dev_hpostudies.yaml"
VALUE_KEYWORDS = (
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
)


def test_checked_in_crd_matches_the_generator() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/kubetune.dev_hpostudies.yaml is stale: run "
        "`python -m kubetune_api.crd > crds/kubetune.dev_hpostudies.yaml`"
    )


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]], **schema}
        schema.pop("$ref")
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        merged = {**schema, **_resolve(branches[0], defs)}
        merged.pop("anyOf")
        return merged
    return schema


def _walk(
    model: dict[str, Any],
    crd_node: dict[str, Any],
    defs: dict[str, Any],
    path: str,
    seen: list[str],
) -> None:
    if path == "runner.template":
        # A free mapping in the spec model, checked against the Kubernetes API's own models.
        model, defs = template_json_schema(), {}
    model = _resolve(model, defs)
    seen.append(path)
    if "anyOf" in model:  # int | str
        assert crd_node.get("x-kubernetes-int-or-string") is True, path
        return
    kind = model.get("type")
    if crd_node.get("x-kubernetes-preserve-unknown-fields"):
        assert kind == "object", path
        return
    assert crd_node.get("type") == kind, path
    for key in VALUE_KEYWORDS:
        bound = CRD_ONLY_BOUNDS.get(path, {}).get(key)
        if key in model:
            assert crd_node.get(key) == model[key], f"{path}: {key}"
        elif key == "enum" and "const" in model:
            assert crd_node.get(key) == [model["const"]], f"{path}: {key}"
        elif bound is not None:
            assert crd_node.get(key) == bound, f"{path}: {key}"
        elif key == "maxLength" and model.get("pattern"):
            pass  # number strings get a length bound for CEL costs
        else:
            assert key not in crd_node, f"{path}: {key} is in the CRD only"
    if kind == "object":
        props = model.get("properties", {})
        assert set(crd_node.get("properties", {})) == set(props), path
        assert set(crd_node.get("required", [])) == set(model.get("required", [])), path
        for name, sub in props.items():
            _walk(sub, crd_node["properties"][name], defs, f"{path}.{name}" if path else name, seen)
    if kind == "array":
        _walk(model["items"], crd_node["items"], defs, f"{path}[]", seen)


def test_crd_schema_agrees_with_the_spec_model_field_by_field() -> None:
    model = StudySpec.model_json_schema(by_alias=True)
    seen: list[str] = []
    _walk(model, spec_schema(), model["$defs"], "", seen)
    assert "searchSpace[].low" in seen and "training.earlyStopping.minDelta" in seen
    assert "runner.template.spec.volumes[].persistentVolumeClaim.claimName" in seen
    assert "runner.template.spec.containers[].envFrom[].secretRef.name" in seen
    assert set(CRD_ONLY_BOUNDS) <= set(seen), "a CRD-only bound names a field the model lacks"


def test_crd_status_schema_is_generated_from_the_status_model() -> None:
    model = StudyStatus.model_json_schema(by_alias=True)
    seen: list[str] = []
    _walk(model, status_schema(), model["$defs"], "", seen)
    assert {"conditions[].lastTransitionTime", "runners.failedPods", "sizing.floorBytes"} <= set(
        seen
    )
    conditions = status_schema()["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    completion = status_schema()["properties"]["completionTime"]
    assert completion["nullable"] is True and completion["format"] == "date-time"


def _nodes(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")


def test_schema_is_structural() -> None:
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert "$ref" not in node, path
        # Maps: in the status, and the Kubernetes API's own in the runner template (labels,
        # node selector, resources); never beside properties.
        assert "additionalProperties" not in node or (
            path.startswith((".status", ".spec.runner.template")) and "properties" not in node
        ), path
        assert "anyOf" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), path
        assert "title" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".spec.task.config", f"{path} preserves unknown fields"


def test_search_space_is_a_map_list_keyed_by_name() -> None:
    search = spec_schema()["properties"]["searchSpace"]
    assert search["x-kubernetes-list-type"] == "map"
    assert search["x-kubernetes-list-map-keys"] == ["name"]


def test_objective_is_immutable() -> None:
    rules = spec_schema()["properties"]["objective"]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf"}.items() <= rules[0].items()


@pytest.mark.parametrize("column", crd()["spec"]["versions"][0]["additionalPrinterColumns"])
def test_printer_columns_point_at_status_fields(column: dict[str, Any]) -> None:
    path = column["jsonPath"]
    if path.startswith(".metadata"):
        return
    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    node = status
    for part in re.sub(r"\[[^\]]*\]", "", path).removeprefix(".status.").split("."):
        node = node.get("properties", {}).get(part) or node.get("items", {}).get(
            "properties", {}
        ).get(part)
        assert node is not None, f"{column['name']}: {path} is not in the status schema"


def test_crd_names_and_subresources() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "kubetune.dev" and spec["scope"] == "Namespaced"
    assert {"hpo"} <= set(spec["names"]["shortNames"])
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert yaml.safe_load(crd_yaml())["metadata"]["name"] == "hpostudies.kubetune.dev"


def test_objectives_are_a_map_list_by_metric_and_immutable() -> None:
    objectives = spec_schema()["properties"]["objectives"]
    assert objectives["x-kubernetes-list-type"] == "map"
    assert objectives["x-kubernetes-list-map-keys"] == ["metric"]
    assert objectives["minItems"] == 2
    assert {"rule": "self == oldSelf"}.items() <= objectives["x-kubernetes-validations"][0].items()
    params = spec_schema()["properties"]["warmStart"]["properties"]["points"]["items"]
    assert params["properties"]["params"]["x-kubernetes-list-map-keys"] == ["name"]


def test_cel_rules_of_several_objectives_and_warm_start_name_their_fields() -> None:
    paths = {rule.get("fieldPath") for rule in spec_schema()["x-kubernetes-validations"]}
    assert {
        ".objective",
        ".objectives",
        ".sampler.type",
        ".pruner.type",
        ".pruner.patience",
        ".warmStart",
        ".warmStart.points",
    } <= paths
    rules = " ".join(rule["rule"] for rule in spec_schema()["x-kubernetes-validations"])
    # The samplers CEL accepts with several objectives are the model's.
    assert str(list(MULTI_OBJECTIVE_SAMPLERS)) in rules


def test_front_size_has_a_printer_column() -> None:
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    front = next(c for c in columns if c["name"] == "Front")
    assert (front["jsonPath"], front["type"]) == (".status.paretoFront.size", "integer")
    trials = status_schema()["properties"]["paretoFront"]["properties"]["trials"]
    assert trials["maxItems"] == 10


def test_trials_per_device_is_auto_or_a_bounded_number_and_has_columns() -> None:
    node = spec_schema()["properties"]["resources"]["properties"]["trialsPerDevice"]
    assert node["x-kubernetes-int-or-string"] is True
    assert (node["pattern"], node["minimum"], node["maximum"]) == ("^Auto$", 1, 16)
    assert node["default"] == "Auto"
    queue = spec_schema()["properties"]["resources"]["properties"]["queueName"]
    assert queue["maxLength"] == 63
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Per-Device"]["jsonPath"] == ".status.sizing.trialsPerDevice"
    assert columns["Device-Use"]["jsonPath"] == ".status.sizing.packing"
    assert columns["Per-Device"]["priority"] == columns["Device-Use"]["priority"] == 1
