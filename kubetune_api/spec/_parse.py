"""Text to numbers: the spec's decimal strings, durations and Kubernetes quantities."""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["DURATION_PATTERN", "parse_duration", "parse_number", "parse_quantity"]

DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_DURATION = re.compile(DURATION_PATTERN)


def parse_number(value: int | str) -> float:
    """A validated spec number (an int, or a decimal string such as ``"1e-4"``)."""
    return float(value)


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``1h30m``."""
    match = _DURATION.match(value)
    if not match or not value:
        raise ValueError(f"not a duration: {value!r}")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_quantity(value: str) -> int:
    """Bytes in a Kubernetes quantity such as ``512Mi``, rounded up to a whole byte.

    The Kubernetes client's own parser; imported here, not at the top, because importing the
    ``kubernetes`` package takes a noticeable time that ``kubetune validate`` should not pay.
    Raises ``ValueError`` for text that is not a quantity.
    """
    from kubernetes.utils import parse_quantity as kubernetes_parse_quantity

    try:
        quantity: Decimal = kubernetes_parse_quantity(value)  # type: ignore[no-untyped-call]
    except ValueError:
        raise ValueError(f"not a quantity: {value!r}") from None
    return math.ceil(quantity)
