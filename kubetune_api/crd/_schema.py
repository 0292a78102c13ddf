"""A pydantic model's JSON schema as a *structural* OpenAPI v3 schema, as CRDs require.

``$ref`` is inlined, ``Optional`` fields are simply not required, ``int | str`` becomes
``x-kubernetes-int-or-string``, integers get ``format: int64``, and ``default`` is kept only
for scalars. A ``decorate(node, path)`` hook adds what the model cannot say (CEL rules,
bounds, list types) at each field path (``a.b``, ``[]`` for a list's items).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubetune_api.spec import NUMBER_PATTERN

__all__ = ["NUMBER_MAX_LENGTH", "structural_schema"]

#: Length bound of number strings, for the API server's CEL cost estimates.
NUMBER_MAX_LENGTH = 64

Decorate = Callable[[dict[str, Any], str], dict[str, Any]]

#: Keywords copied as they are when the model's schema has them.
_KEPT = (
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "nullable",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def structural_schema(schema: Mapping[str, Any], decorate: Decorate) -> dict[str, Any]:
    """``schema`` (from ``model_json_schema(by_alias=True)``) as a structural schema."""
    return _structural(schema, schema.get("$defs", {}), "", decorate)


def _structural(
    schema: Mapping[str, Any], defs: Mapping[str, Any], path: str, decorate: Decorate
) -> dict[str, Any]:
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**target, **schema}
    if "anyOf" in schema:
        return _union(schema, defs, path, decorate)

    out: dict[str, Any] = {}
    if "description" in schema:
        out["description"] = schema["description"]
    kind = schema.get("type")
    if kind == "object":
        out["type"] = "object"
        properties = schema.get("properties") or {}
        if properties:
            out["properties"] = {
                name: _structural(sub, defs, f"{path}.{name}" if path else name, decorate)
                for name, sub in properties.items()
            }
            required = [r for r in schema.get("required", []) if r in properties]
            if required:
                out["required"] = required
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping):
            out["additionalProperties"] = _structural(values, defs, f"{path}{{}}", decorate)
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _structural(schema["items"], defs, f"{path}[]", decorate)
    elif kind in ("string", "integer", "boolean", "number"):
        out["type"] = kind
        if kind == "integer":
            out["format"] = "int64"
        elif "format" in schema:
            out["format"] = schema["format"]
    elif kind is not None:
        raise ValueError(f"{path}: unsupported schema type {kind!r}")
    for key in _KEPT:
        if key in schema:
            out[key] = schema[key]
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if schema.get("pattern") == NUMBER_PATTERN and "maxLength" not in out:
        out["maxLength"] = NUMBER_MAX_LENGTH
    default = schema.get("default")
    if default is not None and not isinstance(default, dict | list):
        out["default"] = default
    return decorate(out, path)


def _union(
    schema: dict[str, Any], defs: Mapping[str, Any], path: str, decorate: Decorate
) -> dict[str, Any]:
    """``X | None`` as ``X``; ``int | str`` as int-or-string; nothing else has a structure."""
    branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
    if schema.get("default") is None:
        schema.pop("default", None)
    if len(branches) == 1:
        merged = {**branches[0], **{k: v for k, v in schema.items() if k != "type"}}
        return _structural(merged, defs, path, decorate)
    types = sorted(str(b.get("type")) for b in branches if "$ref" not in b)
    if types != ["integer", "string"]:
        raise ValueError(f"{path or 'the root'}: cannot express {branches} in a structural schema")
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    string = next(b for b in branches if b.get("type") == "string")
    if "pattern" in string:
        out["pattern"] = string["pattern"]
    if string.get("pattern") == NUMBER_PATTERN:
        out["maxLength"] = NUMBER_MAX_LENGTH
    # Bounds of the integer branch; the API server applies them to integers only.
    integer = next(b for b in branches if b.get("type") == "integer")
    for key in ("minimum", "maximum"):
        if key in integer:
            out[key] = integer[key]
    for key in ("description", "default"):
        if key in schema:
            out[key] = schema[key]
    return decorate(out, path)
