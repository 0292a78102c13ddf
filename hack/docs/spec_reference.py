"""The HPOStudy reference page, generated from the spec model's JSON schema.

Every field is listed under the path users write in YAML (``spec.budget.maxTrials``,
``spec.searchSpace[].name``) with its type, default and rules (bounds, lengths, patterns,
allowed values) and its description, so the page can never drift from what ``kubetune
validate`` and the API server accept. Only the public names ``kubetune_api.spec.HPOStudy`` and
``kubetune_api.status.StudyStatus`` are used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

Schema = Mapping[str, Any]

INTRO = """\
# HPOStudy reference

Every field of an `HPOStudy`, under the path you write in YAML (`[]` marks a list's items).
This page is generated from the spec model that `kubetune validate`, the runners and the
operator load, and from which the CRD's schema is generated, so it lists exactly what is
accepted. Rules that span several fields (`low < high`, stage groups, a pruner with several
objectives, ...) and what each setting does are in the [spec guide](../spec.md).

A field marked *required* must be given; any other field may be left out and takes its default
(a section without a default takes the defaults of its own fields). Numbers that may be
fractional are written as YAML numbers or as text (`"1e-3"`); durations as `6h`, `90m`, `30s`;
memory as Kubernetes quantities (`4Gi`).
"""


def anchor(path: str) -> str:
    """The heading id of a section: its path with every run of other characters as ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


class _Walker:
    def __init__(self, schema: Schema) -> None:
        self.defs: Mapping[str, Schema] = schema.get("$defs", {})

    def resolve(self, node: Schema) -> Schema:
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self.defs[ref.rsplit("/", 1)[-1]]
        return node

    def object_of(self, node: Schema) -> tuple[Schema, str] | None:
        """The object schema a field holds (directly, optionally or as list items) and its
        path suffix (``""`` or ``"[]"``); None for a field of plain values."""
        for variant in _variants(node):
            if "$ref" in variant:
                return self.resolve(variant), ""
            items = variant.get("items")
            if variant.get("type") == "array" and isinstance(items, Mapping) and "$ref" in items:
                return self.resolve(items), "[]"
        return None

    def type_text(self, node: Schema, path: str) -> str:
        texts = []
        for variant in _variants(node):
            if "$ref" in variant:
                texts.append(f"[object](#{anchor(path)})")
            elif "const" in variant:
                texts.append(f"`{json.dumps(variant['const'])}`")
            elif variant.get("type") == "array":
                items = variant.get("items", {})
                inner = self.type_text(items, path) if items else "any"
                texts.append(f"list of {inner}")
            elif "anyOf" in variant:
                texts.append(self.type_text(variant, path))
            elif variant.get("type") == "object":
                texts.append("object (free-form)")
            elif "type" in variant:
                texts.append(str(variant["type"]))
            else:
                texts.append("any")
        return " or ".join(dict.fromkeys(texts))

    def sections(self, path: str, node: Schema) -> Iterator[tuple[str, Schema]]:
        """(path, object schema) of this object and every object below it, depth first."""
        yield path, node
        for name, field in node.get("properties", {}).items():
            found = self.object_of(field)
            if found is not None:
                child, suffix = found
                yield from self.sections(f"{path}.{name}{suffix}", child)


def _variants(node: Schema) -> list[Schema]:
    """The non-null alternatives of a field's schema."""
    options = node.get("anyOf", [node]) if "anyOf" in node else [node]
    return [option for option in options if option.get("type") != "null"]


def _rules(node: Schema) -> list[str]:
    """Constraints of a field (of each of its alternatives, and of its list items)."""
    rules: list[str] = []
    for variant in [node, *_variants(node)]:
        if "enum" in variant:
            rules.append("one of " + ", ".join(f"`{value}`" for value in variant["enum"]))
        for key, text in (
            ("minimum", "≥ {}"),
            ("exclusiveMinimum", "> {}"),
            ("maximum", "≤ {}"),
            ("exclusiveMaximum", "< {}"),
            ("minLength", "at least {} character"),
            ("maxLength", "at most {} character"),
            ("minItems", "at least {} item"),
            ("maxItems", "at most {} item"),
        ):
            if key in variant:
                value = variant[key]
                plural = "s" if text.endswith(("character", "item")) and value != 1 else ""
                rules.append(text.format(value) + plural)
        if "pattern" in variant:
            pattern = str(variant["pattern"])
            known = _known_patterns().get(pattern)
            rules.append(f"{known} (`{pattern}`)" if known else f"matches `{pattern}`")
        items = variant.get("items")
        if isinstance(items, Mapping) and "$ref" not in items:
            rules.extend(f"each: {rule}" for rule in _rules(items))
    return list(dict.fromkeys(rules))


def _known_patterns() -> dict[str, str]:
    """Names for the patterns the spec shares between fields."""
    from kubetune_api.spec import NAME_PATTERN, NUMBER_PATTERN, QUANTITY_PATTERN

    return {
        NUMBER_PATTERN: "a decimal number",
        QUANTITY_PATTERN: "a Kubernetes quantity",
        NAME_PATTERN: "a Kubernetes name",
    }


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ")


def _default(name: str, field: Schema, required: set[str], holds: tuple[Schema, str] | None) -> str:
    if name in required:
        return "*required*"
    if "default" in field:
        value = field["default"]
        return "none" if value is None else f"`{_cell(json.dumps(value))}`"
    if holds is not None and holds[1] == "":
        return "its fields' defaults"
    return "empty" if any(v.get("type") in ("object", "array") for v in _variants(field)) else ""


def section_markdown(walker: _Walker, path: str, node: Schema) -> list[str]:
    lines = [f"## `{path}` {{#{anchor(path)}}}", ""]
    if node.get("description"):
        lines += [str(node["description"]), ""]
    properties: Mapping[str, Schema] = node.get("properties", {})
    if not properties:
        lines += ["Free-form: any keys.", ""]
        return lines
    lines += ["| field | type | default | rules | description |", "|---|---|---|---|---|"]
    required = set(node.get("required", []))
    for name, field in properties.items():
        found = walker.object_of(field)
        child_path = f"{path}.{name}{found[1] if found else ''}"
        row = [
            f"`{child_path}`",
            walker.type_text(field, child_path if found else path),
            _default(name, field, required, found),
            "; ".join(_rules(field)),
            _cell(str(field.get("description", ""))),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def schema_markdown(schema: Schema, root: str) -> list[str]:
    """One section per object of ``schema``, named by its path from ``root``."""
    walker = _Walker(schema)
    lines: list[str] = []
    for path, node in walker.sections(root, schema):
        lines += section_markdown(walker, path, node)
    return lines


def reference_markdown() -> str:
    """The whole page: the HPOStudy (apiVersion, kind, metadata, spec) and its status."""
    from kubetune_api.spec import HPOStudy
    from kubetune_api.status import StudyStatus

    lines = [INTRO]
    study = HPOStudy.model_json_schema(by_alias=True)
    walker = _Walker(study)
    lines += ["## The resource {#the-resource}", ""]
    lines += ["| field | type | default | rules | description |", "|---|---|---|---|---|"]
    required = set(study.get("required", []))
    for name, field in study["properties"].items():
        found = walker.object_of(field)
        row = [
            f"`{name}`",
            walker.type_text(field, name),
            _default(name, field, required, found),
            "; ".join(_rules(field)),
            _cell(str(field.get("description", ""))),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, field in study["properties"].items():
        found = walker.object_of(field)
        if found is not None:
            for path, node in walker.sections(name + found[1], found[0]):
                lines += section_markdown(walker, path, node)
    lines += [
        "## Status",
        "",
        "Written by the operator (`kubectl get hpostudy NAME -o yaml`); never set by hand.",
        "",
    ]
    lines += schema_markdown(StudyStatus.model_json_schema(by_alias=True), "status")
    return "\n".join(lines)
