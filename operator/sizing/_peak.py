"""Where the peak-memory figure of the largest configuration comes from.

In order: ``spec.resources.peakMemory``; a CPU study's ``spec.resources.memory``; an estimate
recorded in the status for the same :func:`estimate_key`; the termination message of the
estimate pod (``kubetune estimate``); else an estimate pod has to run (:class:`PeakPending`).

The estimate pod runs on CPU. Its ``peakBytes`` is what a CPU runner needs; for GPUs it also
estimates, under FakeTensor (nothing allocated, so its own memory does not bound it), the peak of
the full batch and of one-sample micro-batches at each precision a GPU may train at
(:class:`GpuPeak`): GPUs are sized from those, at the precision each GPU will use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune_api.spec import StudySpec
from kubetune_api.status import SizingStatus

__all__ = [
    "GpuPeak",
    "Peak",
    "PeakFailed",
    "PeakPending",
    "estimate_key",
    "parse_estimate_message",
    "resolve_peak",
]


@dataclass(frozen=True)
class GpuPeak:
    """The largest configuration's peak on a GPU training at ``precision``: the batch unsplit,
    and micro-batches of one sample (the least a runner can train it with)."""

    precision: str
    full_batch_bytes: int
    micro_batch_bytes: int

    @property
    def least_bytes(self) -> int:
        return min(self.full_batch_bytes, self.micro_batch_bytes)


@dataclass(frozen=True)
class Peak:
    """Peak training memory of the largest configuration, and where the figure came from.

    ``bytes`` holds for any device (a stated figure) or for a CPU runner (the estimate pod's);
    ``gpu`` has the estimate's figures per precision for GPUs (none: ``bytes`` for GPUs too).
    """

    bytes: int
    method: str  # Spec | FakeTensor | Analytic | Probe | Memory
    gpu: tuple[GpuPeak, ...] = ()

    def on_gpu(self, precision: str, *, micro_batched: bool = False) -> int:
        """What a GPU training at ``precision`` needs: the full batch, or with
        ``micro_batched`` one-sample micro-batches; ``bytes`` without a figure for it."""
        found = next((g for g in self.gpu if g.precision == precision), None)
        if found is None:
            return self.bytes
        return found.least_bytes if micro_batched else found.full_batch_bytes


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
    if not _positive(peak):
        return (
            f"the estimate pod's termination message has no positive peakBytes: {message[:200]!r}"
        )
    assert isinstance(raw, dict) and isinstance(peak, int)
    return Peak(peak, str(raw.get("method", "Estimate")), gpu_peaks(raw.get("gpuPeaks")))


def gpu_peaks(raw: Any) -> tuple[GpuPeak, ...]:
    """The ``gpuPeaks`` of an estimate (as ``kubetune estimate`` writes them, or as the status
    records them); entries that are not well formed are left out."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return ()
    found: list[GpuPeak] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        full, least = item.get("fullBatchPeakBytes"), item.get("microBatchPeakBytes")
        precision = item.get("precision")
        if _positive(full) and _positive(least) and isinstance(precision, str):
            assert isinstance(full, int) and isinstance(least, int)
            found.append(GpuPeak(precision, full, least))
    return tuple(found)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
            recorded_gpu = [g.model_dump(by_alias=True) for g in recorded.gpu_peaks or []]
            return Peak(peak, recorded.method or "Estimate", gpu_peaks(recorded_gpu))
    if estimate_message is not None:
        parsed = parse_estimate_message(estimate_message)
        if isinstance(parsed, Peak):
            return parsed
        return PeakFailed(key, parsed)
    if estimate_failed is not None:
        return PeakFailed(key, estimate_failed)
    return PeakPending(key, "estimating peak memory of the largest configuration")
