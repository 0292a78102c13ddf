"""The rules of conditional parameters (``searchSpace[].when``), mirrored by the CRD's CEL.

A condition names a Categorical or Int parameter listed before its own (so conditions chain
and never loop), and values that parameter can take: its choices, or integers of its range on
its step grid. The batch-size parameter is never conditional: every trial needs one.
"""

from __future__ import annotations

from kubetune_api.spec._errors import Findings
from kubetune_api.spec._models import StudySpec
from kubetune_api.spec._parameter_rules import is_integral, off_grid
from kubetune_api.spec._parse import parse_number
from kubetune_api.spec._search import Parameter

__all__ = ["condition_errors"]


def condition_errors(spec: StudySpec, found: Findings) -> None:
    """What is wrong with each parameter's ``when``."""
    first: dict[str, int] = {}
    for i, p in enumerate(spec.search_space):
        first.setdefault(p.name, i)
    for i, p in enumerate(spec.search_space):
        if p.when is None:
            continue
        at = f"searchSpace[{i}].when"
        if p.name == spec.training.batch_size_parameter:
            found.add(
                at,
                f"{p.name!r} is the batch size (training.batchSizeParameter): every trial "
                "needs one, so it cannot be conditional",
            )
        target = p.when.parameter
        j = first.get(target)
        if j is None:
            found.add(f"{at}.parameter", f"unknown parameter {target!r} (not in searchSpace)")
            continue
        if j >= i:
            found.add(
                f"{at}.parameter",
                f"must name a parameter listed before {p.name!r} ({target!r} is "
                f"searchSpace[{j}]): conditions follow the order of searchSpace",
            )
            continue
        parent = spec.search_space[j]
        if parent.type == "Float":
            found.add(
                f"{at}.parameter",
                f"must name a Categorical or Int parameter ({target!r} is Float)",
            )
            continue
        values = p.when.values
        if len(set(map(repr, values))) != len(values):
            found.add(f"{at}.in", "must not repeat a value")
        for k, value in enumerate(values):
            problem = _value_error(parent, value)
            if problem is not None:
                found.add(f"{at}.in[{k}]", problem)


def _value_error(parent: Parameter, value: int | str) -> str | None:
    """Why ``value`` is not a value ``parent`` (Categorical or Int) takes (as the CEL rules
    check it: the step grid only for integers of at most 18 digits)."""
    if parent.type == "Categorical":
        if value not in (parent.choices or []):
            return f"must be one of the choices of {parent.name!r} (got {value!r})"
        return None
    if not is_integral(value):
        return f"must be an integer: {parent.name!r} is Int (got {value!r})"
    low, high = parent.low_value, parent.high_value
    if low is not None and high is not None and not low <= parse_number(value) <= high:
        return f"must lie within [{parent.low}, {parent.high}] of {parent.name!r} (got {value})"
    if parent.step is not None and off_grid(value, parent.low, parent.step):
        return f"must be low plus a multiple of step {parent.step} of {parent.name!r} (got {value})"
    return None
