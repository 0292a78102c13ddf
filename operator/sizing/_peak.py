"""Where the peak-memory figure of the largest configuration comes from.

In order: ``spec.resources.peakMemory``; a CPU study's ``spec.resources.memory``; an estimate
recorded in the status for the same :func:`estimate_key`; the termination message of the
estimate pod (``kubetune estimate``); else an estimate pod has to run (:class:`PeakPending`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kubetune_api.spec import StudySpec
from kubetune_api.status import SizingStatus

__all__ = [
    "Peak",
    "PeakFailed",
    "PeakPending",
    "estimate_key",
    "parse_estimate_message",
    "resolve_peak",
]


@dataclass(frozen=True)
class Peak:
    """Peak training memory of the largest configuration, and where the figure came from."""

    bytes: int
    method: str  # Spec | FakeTensor | Analytic | Probe | Memory


@dataclass(frozen=True)
class PeakPending:
    """The estimate is not known yet: an estimate pod has to run (or is running)."""

    key: str
    reason: str


@dataclass(frozen=True)
class PeakFailed:
    """The estimate pod failed; the message says why and what the user can do."""

    key: str
    message: str


def estimate_key(spec: StudySpec) -> str:
    """A short digest of what the peak-memory estimate depends on.

    A stored estimate is reused while this key is unchanged, and redone when the task, the
    search space or the training settings change.
    """
    basis = spec.model_dump(
        mode="json", by_alias=True, include={"task", "search_space", "training"}
    )
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


def parse_estimate_message(message: str) -> Peak | str:
    """The estimate pod's termination message as a :class:`Peak`, or why it is unusable."""
    try:
        raw = json.loads(message)
    except ValueError:
        return f"the estimate pod's termination message is not JSON: {message[:200]!r}"
    peak = raw.get("peakBytes") if isinstance(raw, dict) else None
    if not isinstance(peak, int) or isinstance(peak, bool) or peak <= 0:
        return (
            f"the estimate pod's termination message has no positive peakBytes: {message[:200]!r}"
        )
    return Peak(peak, str(raw.get("method", "Estimate")))


def resolve_peak(
    spec: StudySpec,
    recorded: SizingStatus | None,
    estimate_message: str | None = None,
    estimate_failed: str | None = None,
) -> Peak | PeakPending | PeakFailed:
    """Where the peak-memory figure comes from, in order of precedence.

    Args:
        spec: The study spec.
        recorded: ``status.sizing`` as last written (holds an earlier estimate).
        estimate_message: Termination message of a Succeeded estimate pod of this spec.
        estimate_failed: Why the estimate pod of this spec failed, if it did.
    """
    resources = spec.resources
    if resources.peak_memory_bytes is not None:
        return Peak(resources.peak_memory_bytes, "Spec")
    if resources.accelerator == "CPU" and resources.memory_bytes is not None:
        return Peak(resources.memory_bytes, "Memory")
    key = estimate_key(spec)
    if recorded is not None and recorded.estimate_key == key:
        peak = recorded.peak_bytes
        if peak is not None and peak > 0:
            return Peak(peak, recorded.method or "Estimate")
    if estimate_message is not None:
        parsed = parse_estimate_message(estimate_message)
        if isinstance(parsed, Peak):
            return parsed
        return PeakFailed(key, parsed)
    if estimate_failed is not None:
        return PeakFailed(key, estimate_failed)
    return PeakPending(key, "estimating peak memory of the largest configuration")
