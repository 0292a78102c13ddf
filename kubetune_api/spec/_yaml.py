"""YAML read and written as ``kubectl`` reads it, so a study file has one meaning everywhere.

PyYAML follows YAML 1.1 its own way and kubectl (``sigs.k8s.io/yaml``, a fork of go-yaml v2)
another, so the same text meant two things: ``low: 1e-4`` was the string ``"1e-4"`` for PyYAML
and the number 0.0001 for kubectl, and ``kubetune validate`` accepted what the API server
rejected. :class:`KubeLoader` resolves plain scalars as kubectl does:

* booleans: ``true``/``false``, ``yes``/``no``, ``on``/``off`` and ``y``/``n``, in lower-,
  title- and upper-case;
* integers: Go's ``strconv.ParseInt(text, 0, 64)`` once ``_`` are dropped (``0x1F``, ``0o17``,
  ``017``, ``0b101``); one too large for 64 bits is read as a float;
* floats: a dot or an exponent (``1e-4``, ``1.5``, ``.5``, ``1.``); text that overflows a
  double stays a string; ``.inf`` and ``.nan`` are refused as values (JSON has no such numbers,
  so kubectl cannot send them); a whole float that fits 64 bits is the integer kubectl sends
  (``10.0`` and ``1e3`` go out as ``10`` and ``1000``);
* no timestamps and no base-60 numbers: ``2024-01-01`` and ``1:30`` are strings;
* mapping keys become strings as kubectl's YAML-to-JSON step writes them (``1`` -> ``"1"``,
  ``on`` -> ``"true"``, ``1.5`` -> ``"1.5"``); a null key is refused.

:class:`KubeDumper` resolves the same way, so it quotes every string kubectl would read as
something else (``"1e-4"``, ``"yes"``) and what it writes reads back unchanged.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

__all__ = [
    "KubeDumper",
    "KubeLoader",
    "YamlValueError",
    "dump_yaml",
    "go_yaml_number",
    "load_yaml_documents",
]

_BOOL_TAG = "tag:yaml.org,2002:bool"
# Plain scalars go-yaml reads as numbers (:func:`go_yaml_number`).
_NUMBER_TAG = "tag:kubetune.dev,2025:go-yaml-number"
# Kept from PyYAML's resolvers: null (``~``, ``null``, empty) and merge keys (``<<``).
_KEPT_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")

_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF"), False),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}
# go-yaml tries a plain scalar as a number when it starts with one of these.
_NUMBER_START = "-+0123456789."
_GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
}
_PREFIXES = {"0x": (16, "0123456789abcdefABCDEF"), "0o": (8, "01234567"), "0b": (2, "01")}
_INT64 = range(-(2**63), 2**63)
_UINT64 = range(0, 2**64)


class YamlValueError(yaml.YAMLError):
    """A value kubectl cannot send: ``.inf`` or ``.nan``, a null or oversized mapping key."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class _NonFinite(float):
    """``.inf`` or ``.nan`` as read, with where it was: only a mapping key may be one."""

    mark: Any = None
    text = ""


def _parse_go_int(text: str) -> int | None:
    """``strconv.ParseInt(text, 0, 64)``, then ``ParseUint`` (unsigned text) as go-yaml tries."""
    sign, digits = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    prefix = digits[:2].lower()
    if prefix in _PREFIXES:
        base, allowed = _PREFIXES[prefix]
        body = digits[2:]
    elif len(digits) > 1 and digits[0] == "0":
        base, allowed, body = 8, "01234567", digits[1:]
    else:
        base, allowed, body = 10, "0123456789", digits
    if not body or any(c not in allowed for c in body):
        return None
    value = int(body, base) * (-1 if sign == "-" else 1)
    if value in _INT64 or (not sign and value in _UINT64):
        return value
    return None


def go_yaml_number(text: str) -> int | float | None:
    """The number go-yaml v2 (kubectl) reads from a plain scalar; ``None``: it is a string."""
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    plain = text.replace("_", "")
    number = _parse_go_int(plain)
    if number is not None:
        return number
    if _GO_FLOAT.match(plain):
        value = float(plain)
        # Go's ParseFloat fails on overflow, and go-yaml then keeps the text as a string.
        return value if math.isfinite(value) else None
    return None


_RESOLVERS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _resolve(resolver: Any, kind: Any, value: str, implicit: tuple[bool, bool]) -> str:
    """The tag go-yaml gives a scalar: a boolean, a number, else PyYAML's null, merge or str."""
    if kind is ScalarNode and implicit[0]:
        if value in _BOOLS:
            return _BOOL_TAG
        if value[:1] in _NUMBER_START and go_yaml_number(value) is not None:
            return _NUMBER_TAG
    tag: str = yaml.resolver.Resolver.resolve(resolver, kind, value, implicit)  # type: ignore[no-untyped-call]
    return tag


class KubeLoader(yaml.SafeLoader):
    """A safe loader that reads scalars and keys as kubectl does (see the module docstring)."""

    yaml_implicit_resolvers = _RESOLVERS

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        return _resolve(self, kind, value, implicit)

    def construct_go_yaml_number(self, node: ScalarNode) -> Any:
        text = str(self.construct_scalar(node))
        number = go_yaml_number(text)
        if number is None:
            return text
        if isinstance(number, float) and not math.isfinite(number):
            special = _NonFinite(number)
            special.mark, special.text = node.start_mark, text
            return special
        return number

    def construct_go_yaml_bool(self, node: ScalarNode) -> bool:
        return _BOOLS[str(self.construct_scalar(node))]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Keys are converted as they are read: 1 and "on" are one Python key, two JSON keys.
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key is None:
                raise YamlValueError(
                    "a mapping key is null, which JSON cannot carry", key_node.start_mark
                )
            if not isinstance(key, Hashable):
                raise YamlValueError("a mapping key is a list or a mapping", key_node.start_mark)
            mapping[_json_key(key, key_node)] = self.construct_object(value_node, deep=deep)
        return mapping


def _json_key(key: Any, node: yaml.Node) -> Any:
    """A mapping key as kubectl's YAML-to-JSON step writes it."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        if key not in _INT64:
            raise YamlValueError(f"the mapping key {key} is beyond 64 bits", node.start_mark)
        return str(key)
    if isinstance(key, float):
        return _go_float32_text(key)
    return key


def _go_float32_text(value: float) -> str:
    """Go's ``strconv.FormatFloat(value, 'g', -1, 32)``, as kubectl writes a float key: the
    shortest digits that give back the same float32, with an exponent below 1e-4 and from 1e6."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32: Go rounds it to an infinity
        single = math.copysign(math.inf, value)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    if single == 0:
        return "-0" if math.copysign(1.0, single) < 0 else "0"
    for digits in range(1, 10):
        text = f"{single:.{digits - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    exponent = int(exponent_text)
    sign = "-" if mantissa.startswith("-") else ""
    figures = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    if exponent < -4 or exponent >= 6:
        head = figures[0] + ("." + figures[1:] if len(figures) > 1 else "")
        return f"{sign}{head}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    point = exponent + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{figures}"
    if point >= len(figures):
        return f"{sign}{figures}{'0' * (point - len(figures))}"
    return f"{sign}{figures[:point]}.{figures[point:]}"


KubeLoader.add_constructor(_BOOL_TAG, KubeLoader.construct_go_yaml_bool)
KubeLoader.add_constructor(_NUMBER_TAG, KubeLoader.construct_go_yaml_number)


class KubeDumper(yaml.SafeDumper):
    """A safe dumper that quotes every string kubectl would not read back as that string."""

    yaml_implicit_resolvers = _RESOLVERS

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        return _resolve(self, kind, value, implicit)


def _represent_number(dumper: KubeDumper, value: int | float) -> yaml.ScalarNode:
    # Numbers are written plain: the loader's number resolver gives them back.
    if isinstance(value, float):
        node = yaml.SafeDumper.represent_float(dumper, value)
    else:
        node = yaml.SafeDumper.represent_int(dumper, value)
    node.tag = _NUMBER_TAG
    return node


def _represent_str(dumper: KubeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML writes these line separators raw in plain and single-quoted text, where a reader
    # takes them for line breaks; double quotes escape them.
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


KubeDumper.add_representer(str, _represent_str)
KubeDumper.add_representer(int, _represent_number)
KubeDumper.add_representer(float, _represent_number)


def _as_kubectl_sends(document: Any) -> None:
    """Values as kubectl's JSON carries them, in place: a whole float that fits 64 bits is an
    integer (Go writes ``10.0`` as ``10``), and ``.inf`` or ``.nan`` cannot be sent at all."""
    stack, seen = [document], set()
    while stack:
        container = stack.pop()
        # Aliases share objects: each is looked at once, however often it is referred to.
        if id(container) in seen:
            continue
        seen.add(id(container))
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            value = container[key]
            if isinstance(value, dict | list):
                stack.append(value)
            elif isinstance(value, _NonFinite):
                raise YamlValueError(
                    f"{value.text} is not accepted: JSON, and so kubectl, has no such number",
                    value.mark,
                )
            elif isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
                container[key] = int(value)


def load_yaml_documents(text: str) -> list[Any]:
    """Every non-empty document of ``text``, read as kubectl reads it.

    Raises ``yaml.YAMLError`` (with ``problem_mark`` where known) for text kubectl refuses too.
    """
    documents = [d for d in yaml.load_all(text, Loader=KubeLoader) if d is not None]
    _as_kubectl_sends(documents)
    return documents


def dump_yaml(document: Any) -> str:
    """``document`` as YAML that :func:`load_yaml_documents` (and kubectl) read back as it is."""
    return yaml.dump(document, Dumper=KubeDumper, sort_keys=False, allow_unicode=True, width=100)
