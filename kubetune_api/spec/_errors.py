"""Spec errors with field paths, and pydantic's errors translated into them.

Every message is short, whatever the input: a field error's path and message are bounded
(:data:`MAX_PATH`, :data:`MAX_MESSAGE`), values are quoted in part (:func:`shown`), and a
rendered :class:`SpecError` lists at most :data:`MAX_SHOWN_ERRORS` errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from kubetune_api.redaction import redact
from kubetune_api.spec._models import HPOStudy

__all__ = [
    "MAX_MESSAGE",
    "MAX_PATH",
    "MAX_SHOWN_ERRORS",
    "FieldError",
    "Findings",
    "SpecError",
    "format_path",
    "model_at",
    "pydantic_errors",
    "shown",
]

#: Characters of a field path and of a message kept in a :class:`FieldError`.
MAX_PATH, MAX_MESSAGE = 160, 240
#: Errors a rendered :class:`SpecError` lists (the count says how many there are).
MAX_SHOWN_ERRORS = 20
#: Characters of an input value quoted in a message.
MAX_SHOWN_VALUE = 40

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redacted(text: str) -> str:
    """``text`` with its URLs' passwords replaced, looking no further than is ever shown plus a
    URL's length (a quoted value may be a megabyte long)."""
    return redact(text[:_REDACTION_WINDOW])


#: Characters of a text searched for passwords before it is clipped.
_REDACTION_WINDOW = 4096


@dataclass(frozen=True)
class FieldError:
    """One problem: the field's path (``spec.searchSpace[0].low``) and what is wrong, both
    clipped to a few lines' length."""

    path: str
    message: str

    def __post_init__(self) -> None:
        # A password in a URL pasted into the spec is never repeated (redacted before clipping,
        # which could cut the URL before the "@" that gives it away).
        object.__setattr__(self, "path", _clip(_redacted(self.path), MAX_PATH))
        object.__setattr__(self, "message", _clip(_redacted(self.message), MAX_MESSAGE))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Findings:
    """Problems found so far, each at a path below ``prefix`` (the spec's own path)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.errors: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        """A problem of the field at ``path`` below the spec."""
        self.errors.append(FieldError(f"{self.prefix}.{path}", message))


class SpecError(ValueError):
    """A study spec is invalid; ``errors`` holds every problem with its field path."""

    def __init__(self, errors: list[FieldError], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1 and not self.errors[0].path:
            return f"{head}{self.errors[0].message}"  # about the file: one line
        lines = [f"{head}invalid HPOStudy ({len(self.errors)} error(s))"]
        lines.extend(f"  {e}" for e in self.errors[:MAX_SHOWN_ERRORS])
        if len(self.errors) > MAX_SHOWN_ERRORS:
            lines.append(f"  ... and {len(self.errors) - MAX_SHOWN_ERRORS} more")
        return "\n".join(lines)


def format_path(loc: Iterable[str | int]) -> str:
    """``("spec", "searchSpace", 0, "low")`` as ``spec.searchSpace[0].low``; a key that is not
    an identifier (an unknown field with spaces, newlines ...) is quoted in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{shown(part)}]"
    return out


def shown(value: Any) -> str:
    """``value`` as a message quotes it: a string or number in part, a list or mapping by size
    (never the whole input: a spec with 10,000 parameters gives a one-line error)."""
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    return _clip(_redacted(repr(value)), MAX_SHOWN_VALUE)


def _unknown_field(owner: type[BaseModel] | None, key: str | int) -> str:
    """The message for an unknown field: what is accepted, and the API's spelling of a field
    written in Python's (``max_trials`` for ``maxTrials``), which the API server does not know."""
    if owner is None:
        return "unknown field"
    spelled = {api_name(n, f) for n, f in owner.model_fields.items()}
    if isinstance(key, str) and key not in spelled and to_camel(key) in spelled:
        return f"unknown field: the API spells it {to_camel(key)}"
    return f"unknown field (accepted: {_accepted_fields(owner)})"


def _accepted_fields(model: type[BaseModel]) -> str:
    return ", ".join(sorted(api_name(n, f) for n, f in model.model_fields.items()))


def api_name(name: str, field: FieldInfo) -> str:
    """The name the API gives a model's field: its alias (the Kubernetes client's models keep
    it as the serialization alias, and accept the Python name too), else its name."""
    return field.alias or field.serialization_alias or name


def python_spellings(
    node: Any, model: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """The fields of ``node`` (validated as ``model``) spelt as Python spells them
    (``max_skew``), with the API's spelling: the Kubernetes client's models accept both, the
    API server only its own."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from python_spellings(item, model, (*path, index))
        return
    if not (isinstance(node, dict) and isinstance(model, type) and issubclass(model, BaseModel)):
        return
    fields = model.model_fields
    by_api = {api_name(n, f): f for n, f in fields.items()}
    for key, value in node.items():
        if key in by_api:
            yield from python_spellings(value, _unwrap_model(by_api[key].annotation), (*path, key))
        elif key in fields and api_name(key, fields[key]) != key:
            yield (*path, key), api_name(key, fields[key])


def model_at(loc: Iterable[str | int], root: type[BaseModel] = HPOStudy) -> type[BaseModel] | None:
    """The model class that owns the object at ``loc`` below ``root`` (for naming the accepted
    fields)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if api_name(n, f) == part),
            None,
        )
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple[str | int, ...], raw: Any, kind: str) -> tuple[str | int, ...]:
    """``loc`` without the union-member tags pydantic adds (``int``, ``constrained-str``): the
    parts that lead through the input data, and a missing field's name."""
    kept: list[str | int] = []
    node = raw
    for index, part in enumerate(loc):
        if _holds(node, part):
            node = node[part]
        elif not (kind == "missing" and index == len(loc) - 1):
            continue
        kept.append(part)
    return tuple(kept)


def _holds(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def pydantic_errors(
    exc: ValidationError, raw: Any, root: type[BaseModel] = HPOStudy
) -> list[FieldError]:
    """pydantic's errors on ``raw`` (validated as ``root``) as :class:`FieldError` s: one per
    path, saying what is accepted."""
    errors: dict[str, FieldError] = {}
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), raw, err["type"])
        path = format_path(loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            owner = model_at(loc[:-1], root)
            message = _unknown_field(owner, loc[-1] if loc else "")
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected} (got {shown(value)})"
        elif kind == "string_pattern_mismatch":
            message = f"{shown(value)} is not accepted: {_pattern_hint(loc)}"
        elif isinstance(value, float) and kind in _TYPE_ERRORS:
            message = _float_hint(loc, kind, value)
        else:
            message = f"{err['msg']} (got {shown(value)})" if "input" in err else err["msg"]
        # Union members (int | "number") each report the same bad value; the pattern message
        # says what is accepted, so it wins over "not an integer".
        if path not in errors or kind == "string_pattern_mismatch":
            errors[path] = FieldError(path, message)
    return list(errors.values())


_TYPE_ERRORS = {"int_type", "int_from_float", "string_type", "bool_type"}
#: Fields whose decimal numbers are text (``low: "1e-4"``).
_NUMBER_TEXT_FIELDS = {
    "low",
    "high",
    "step",
    "default",
    "value",
    "choices",
    "memoryHeadroom",
    "minDelta",
    "percentile",
    "pThreshold",
}


def _float_hint(loc: tuple[str | int, ...], kind: str, value: float) -> str:
    """A float where the spec takes an integer, text or a boolean (specs have no floats)."""
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if last in _NUMBER_TEXT_FIELDS:
        return (
            f'a decimal number must be quoted text, e.g. "{value!r}" (got the unquoted '
            f"number {shown(value)}, which the API server refuses)"
        )
    expected = {"string_type": "a string", "bool_type": "true or false"}.get(kind, "an integer")
    return f"must be {expected} (got the number {shown(value)})"


def _pattern_hint(loc: tuple[str | int, ...]) -> str:
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if last in {"low", "high", "step", "default"} or last in {
        "memoryHeadroom",
        "minDelta",
        "percentile",
        "pThreshold",
    }:
        return 'expected a decimal number such as "0.5" or "1e-4"'
    hints = {
        "entrypoint": "expected module:attribute, e.g. trial_runner.tasks.digits:DigitsMLP",
        "timeout": "expected a duration such as 90m, 6h or 1h30m",
        "trialTimeout": "expected a duration such as 30m, 2h or 1h30m",
        "stallTimeout": "expected Auto or a duration such as 20m or 1h",
        "name": "expected a lowercase DNS label (a-z, 0-9, '-') or, for parameters, an "
        "identifier (letters, digits, '_')",
        "group": "expected a CamelCase word (letters and digits)",
        "peakMemory": "expected a quantity such as 512Mi or 20Gi",
        "memory": "expected a quantity such as 512Mi or 20Gi",
        "cpu": "expected a CPU quantity such as 500m or 2",
        "batchSizeParameter": "expected a parameter name",
        "hpoStudy": "expected the name of an HPOStudy (a lowercase DNS label)",
        "trialsPerDevice": "expected Auto or a number of runner processes per device, 1 to 16",
        "queueName": "expected the name of a Kueue LocalQueue (lowercase letters, digits, "
        "'-' and '.')",
    }
    return hints.get(last, "does not match the accepted format")
