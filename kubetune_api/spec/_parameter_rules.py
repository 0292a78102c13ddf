"""The rules of one search-space parameter: its type's fields, bounds, step and default, and
which values it accepts (:func:`point_value_error`, also used for warm-start points)."""

from __future__ import annotations

import math
import re

from kubetune_api.spec._errors import Findings
from kubetune_api.spec._parse import parse_number
from kubetune_api.spec._search import Parameter

__all__ = ["is_integral", "off_grid", "parameter_errors", "point_value_error"]


def point_value_error(p: Parameter, raw: int | str) -> str | None:
    """Why ``raw`` is not a value of parameter ``p`` (``None`` when it is one).

    The checks Optuna's distribution of ``p`` makes (type, bounds, step), so a point that
    validates is evaluated as written.
    """
    if p.type == "Categorical":
        choices = p.choices or []
        if raw not in choices:
            return f"must be one of the choices of {p.name!r} (got {raw!r})"
        return None
    if isinstance(raw, str) and not _is_number(raw):
        return f"must be a number for a {p.type} parameter (got {raw!r})"
    if p.type == "Int" and not is_integral(raw):
        return f"must be an integer for an Int parameter (got {raw!r})"
    value = parse_number(raw)
    low, high, step = p.low_value, p.high_value, p.step_value
    if low is None or high is None or not low <= value <= high:
        return f"must lie within [{p.low}, {p.high}] (got {raw})"
    if step is not None and step > 0 and low is not None:
        k = (value - low) / step
        if abs(k - round(k)) > 1e-8:
            return f"must be low plus a multiple of step {p.step} (got {raw})"
    return None


def parameter_errors(p: Parameter, at: str, found: Findings) -> None:
    """What is wrong with search-space parameter ``p`` (at ``at`` below the spec) on its own."""

    def err(field: str, message: str) -> None:
        found.add(f"{at}.{field}", message)

    if p.type == "Categorical":
        if not p.choices:
            err("choices", "required and non-empty for a Categorical parameter")
        elif len(set(map(repr, p.choices))) != len(p.choices):
            err("choices", "must not repeat a value")
        for field in ("low", "high", "step"):
            if getattr(p, field) is not None:
                err(field, "not accepted for a Categorical parameter (use choices)")
        if p.scale != "Linear":
            err("scale", "not accepted for a Categorical parameter")
        if p.default is not None and p.choices and p.default not in p.choices:
            err("default", f"must be one of the choices (got {p.default!r})")
        return

    if p.choices is not None:
        err("choices", f"not accepted for a {p.type} parameter (use low and high)")
    bounds_ok = True
    for field in ("low", "high"):
        value = getattr(p, field)
        if value is None:
            err(field, f"required for a {p.type} parameter")
            bounds_ok = False
        elif p.type == "Int" and not is_integral(value):
            err(field, f"must be an integer for an Int parameter (got {value!r})")
            bounds_ok = False
    if not bounds_ok:
        return
    assert p.low_value is not None and p.high_value is not None
    low, high = p.low_value, p.high_value
    if not (math.isfinite(low) and math.isfinite(high)):
        err("low", "bounds must be finite")
        return
    if low >= high:
        err("low", f"must be below high (got low={p.low}, high={p.high})")
    if p.scale == "Log" and low <= 0:
        err("low", f"must be above 0 with scale Log (got {p.low})")
    if p.step is not None:
        assert p.step_value is not None
        if p.step_value <= 0:
            err("step", f"must be above 0 (got {p.step})")
        elif p.scale == "Log":
            err("step", "not accepted with scale Log")
        elif p.type == "Int" and not is_integral(p.step):
            err("step", f"must be an integer for an Int parameter (got {p.step!r})")
        elif (
            p.type == "Int"
            and p.high is not None
            and low < high
            and off_grid(p.high, p.low, p.step)
        ):
            # Optuna would narrow the range to the last point of the grid, unasked.
            span, step = int(high) - int(low), int(p.step_value)
            last = int(low) + span // step * step
            err(
                "step",
                f"must divide high - low ({span}): the grid from {p.low} by {p.step} ends at "
                f"{last}, not at high; use high {last} or {last + step}",
            )
    if p.default is not None:
        default = parse_number(p.default) if _is_number(p.default) else None
        if default is None:
            err("default", f"must be a number for a {p.type} parameter (got {p.default!r})")
        elif not low <= default <= high:
            err("default", f"must lie within [low, high] (got {p.default})")
        elif p.type == "Int" and not is_integral(p.default):
            err("default", f"must be an integer for an Int parameter (got {p.default!r})")
        elif (
            p.type == "Int"
            and p.step is not None
            and low <= default
            and off_grid(p.default, p.low, p.step)
        ):
            err("default", f"must be low plus a multiple of step {p.step} (got {p.default})")


#: Integers the step grid is checked for (the CRD's CEL rules read them with ``int()``): at most
#: 18 digits, so that no difference of two overflows 64 bits.
GRID_INTEGER = re.compile(r"[-+]?[0-9]{1,18}")


def off_grid(value: int | str, low: int | str | None, step: int | str) -> bool:
    """Whether ``value`` is not ``low`` plus a multiple of ``step`` (positive), all integers the
    grid is checked for (:data:`GRID_INTEGER`); False when one is not."""
    numbers = (value, low, step)
    if not all(n is not None and GRID_INTEGER.fullmatch(str(n)) for n in numbers):
        return False
    stride = int(step)
    return stride > 0 and (int(value) - int(low or 0)) % stride != 0


def _is_number(value: int | str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def is_integral(value: int | str) -> bool:
    if isinstance(value, int):
        return True
    try:
        return float(value).is_integer() and re.fullmatch(r"[-+]?[0-9]+", value) is not None
    except ValueError:
        return False
