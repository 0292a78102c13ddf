"""Spec errors with field paths, and pydantic's errors translated into them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from trial_runner.spec._models import HPOStudy

__all__ = ["FieldError", "SpecError", "format_path", "pydantic_errors"]


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A study spec is invalid; ``errors`` holds every problem with its field path."""

    def __init__(self, errors: list[FieldError], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}invalid HPOStudy ({len(self.errors)} error(s))"]
        lines.extend(f"  {e}" for e in self.errors)
        return "\n".join(lines)


def format_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _accepted_fields(model: type[BaseModel]) -> str:
    return ", ".join(sorted((f.alias or n) for n, f in model.model_fields.items()))


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that owns the object at ``loc`` (for naming the accepted fields)."""
    model: Any = HPOStudy
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if (f.alias or n) == part),
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


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic adds union-member tags ("int", "str", "constrained-str", "list[...]") to locs.
    return tuple(
        p
        for p in loc
        if isinstance(p, int) or not (p in {"int", "str", "bool"} or "[" in p or "-" in p)
    )


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors as :class:`FieldError` s: one per path, saying what is accepted."""
    errors: dict[str, FieldError] = {}
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]))
        path = format_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(loc[:-1])
            accepted = f" (accepted: {_accepted_fields(owner)})" if owner else ""
            message = f"unknown field{accepted}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected} (got {err['input']!r})"
        elif kind == "string_pattern_mismatch":
            message = f"{err['input']!r} is not accepted: {_pattern_hint(loc)}"
        else:
            message = f"{err['msg']} (got {err['input']!r})" if "input" in err else err["msg"]
        # Union members (int | "number") each report the same bad value; the pattern message
        # says what is accepted, so it wins over "not an integer".
        if path not in errors or kind == "string_pattern_mismatch":
            errors[path] = FieldError(path, message)
    return list(errors.values())


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
