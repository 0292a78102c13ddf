"""Sizing: which resource a runner pod requests, from what the cluster's nodes advertise.

Pure functions over plain inputs (node inventory, a peak-memory figure, ``spec.resources``).

Memory of each kind of resource:
    * MIG slice (mixed strategy) ``nvidia.com/mig-<g>g.<mem>gb``: the node label
      ``nvidia.com/mig-<g>g.<mem>gb.memory`` (MiB) that GPU Feature Discovery sets, else
      ``<mem>`` decimal gigabytes (10**9 bytes) read from the profile name, which errs on the
      safe side (a 1g.10gb slice of an A100-80GB has about 9.5 GiB).
    * Whole GPU ``nvidia.com/gpu``: the node label ``nvidia.com/gpu.memory`` (MiB), as GPU
      Feature Discovery sets it; with the MIG *single* strategy GFD sets that label to the
      slice's memory, so single-strategy slices are sized right too. A GPU node without the
      label cannot be sized and is skipped.
    * CPU: the node's allocatable ``memory``; the pod then requests (and is limited to) the
      needed memory.

``accelerator: Auto`` chooses among GPUs and MIG slices when the cluster advertises any, and
CPU only when it advertises no GPU at all: a model that fits no GPU must not silently train on
CPU for days.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trial_runner.spec import StudySpec, parse_number, parse_quantity

__all__ = [
    "CPU_MEMORY",
    "GPU",
    "GPU_MEMORY_LABEL",
    "Candidate",
    "NoFit",
    "NodeInfo",
    "Peak",
    "PeakFailed",
    "PeakPending",
    "Sizing",
    "SizingDecision",
    "choose_resource",
    "estimate_key",
    "format_bytes",
    "mig_memory_bytes",
    "next_floor",
    "node_info",
    "parse_estimate_message",
    "required_bytes",
    "resolve_peak",
]

GPU = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
CPU_MEMORY = "memory"
_MIG = re.compile(r"^nvidia\.com/mig-(\d+)g\.(\d+)gb(\+me)?$")

Kind = Literal["MIG", "GPU", "CPU"]


@dataclass(frozen=True)
class NodeInfo:
    """What sizing needs to know of one node."""

    name: str
    allocatable: Mapping[str, str]
    labels: Mapping[str, str]
    schedulable: bool = True


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    """A :class:`NodeInfo` from a Node object as the API returns it (a plain mapping)."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    return NodeInfo(
        name=str(metadata.get("name", "")),
        allocatable={str(k): str(v) for k, v in (status.get("allocatable") or {}).items()},
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        schedulable=not spec.get("unschedulable", False),
    )


def mig_memory_bytes(resource: str) -> int | None:
    """Memory of a MIG resource name (``nvidia.com/mig-2g.20gb`` → 20e9), else ``None``."""
    match = _MIG.match(resource)
    return int(match.group(2)) * 10**9 if match else None


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Candidate:
    """One kind of resource some nodes advertise, with its memory."""

    kind: Kind
    resource: str
    memory_bytes: int
    nodes: tuple[str, ...]
    available: int  # allocatable units summed over nodes (CPU: number of nodes)


def _candidates(nodes: Iterable[NodeInfo]) -> list[Candidate]:
    found: dict[tuple[str, int], tuple[Kind, list[str], int]] = {}

    def add(kind: Kind, resource: str, memory: int, node: str, units: int) -> None:
        key = (resource, memory)
        _, names, total = found.get(key, (kind, [], 0))
        found[key] = (kind, [*names, node], total + units)

    for node in nodes:
        if not node.schedulable:
            continue
        for resource, value in node.allocatable.items():
            units = _count(value)
            memory = mig_memory_bytes(resource)
            mig_label = node.labels.get(f"{resource}.memory", "")
            if memory is not None and mig_label.isdigit():
                memory = int(mig_label) * 2**20
            if memory is not None and units > 0:
                add("MIG", resource, memory, node.name, units)
        gpus = _count(node.allocatable.get(GPU, "0"))
        label = node.labels.get(GPU_MEMORY_LABEL)
        if gpus > 0 and label and label.isdigit():
            add("GPU", GPU, int(label) * 2**20, node.name, gpus)
        memory_text = node.allocatable.get(CPU_MEMORY)
        if memory_text:
            with contextlib.suppress(ValueError):
                add("CPU", CPU_MEMORY, _parse_memory(memory_text), node.name, 1)
    return [
        Candidate(kind, resource, memory, tuple(sorted(names)), total)
        for (resource, memory), (kind, names, total) in found.items()
    ]


def _parse_memory(text: str) -> int:
    # Node memory is usually "16Gi" or "16384Ki"; plain bytes are accepted too.
    if text.isdigit():
        return int(text)
    return parse_quantity(text)


def format_bytes(value: int) -> str:
    """``13958643712`` → ``"13Gi"``; Mi precision below 10Gi. Rounds up."""
    gib = value / 2**30
    if gib >= 10 or value % 2**30 == 0:
        return f"{math.ceil(gib)}Gi"
    return f"{math.ceil(value / 2**20)}Mi"


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


@dataclass(frozen=True)
class SizingDecision:
    """The resource each runner pod requests.

    Attributes:
        kind: MIG, GPU or CPU.
        resource: The extended resource (``nvidia.com/mig-2g.20gb``, ``nvidia.com/gpu``) or
            ``memory`` for CPU runners.
        quantity: What the pod requests of ``resource`` (``"1"`` for GPUs, ``"1536Mi"``).
        memory_bytes: Device memory the runner gets (CPU: the memory limit).
        required_bytes: Peak estimate plus headroom (and the OOM floor).
        peak: The peak estimate the decision started from.
        reason: One line for status and events.
    """

    kind: Kind
    resource: str
    quantity: str
    memory_bytes: int
    required_bytes: int
    peak: Peak
    reason: str


@dataclass(frozen=True)
class NoFit:
    """Nothing the cluster advertises can hold a runner; ``reason`` says what was needed."""

    required_bytes: int
    peak: Peak
    reason: str


Sizing = SizingDecision | NoFit


#: What a CPU runner needs besides its training step: the Python process with torch imported
#: (about 640 MiB resident), the task's data and the allocator's cached memory (10-40% above the
#: live tensors on CPU, see docs/benchmarks.md). GPU runners keep these in host memory, which
#: the device-memory sizing does not cover.
RUNNER_PROCESS_BYTES = 2**30


def required_bytes(peak_bytes: int, headroom: str, floor_bytes: int = 0) -> int:
    """Peak plus the fractional headroom, at least ``floor_bytes`` (raised after an OOM)."""
    return max(math.ceil(peak_bytes * (1 + parse_number(headroom))), floor_bytes)


def next_floor(kind: str, memory_bytes: int) -> int:
    """The least memory a runner needs after one with ``memory_bytes`` was OOMKilled.

    A GPU or MIG slice moves to the next larger one (strictly more memory). CPU memory has
    no steps, so it grows by half.
    """
    if kind == "CPU":
        return math.ceil(memory_bytes * 1.5)
    return memory_bytes + 1


def choose_resource(
    nodes: Iterable[NodeInfo],
    spec: StudySpec,
    peak: Peak,
    floor_bytes: int = 0,
) -> Sizing:
    """The smallest resource that fits ``peak`` plus headroom, honouring ``accelerator``.

    Args:
        nodes: The cluster's nodes.
        spec: The study spec (``resources.accelerator``, ``memoryHeadroom``, ``memory``).
        peak: Peak training memory of the largest configuration.
        floor_bytes: Least memory after an OOMKilled runner (see :func:`next_floor`).
    """
    resources = spec.resources
    need = required_bytes(peak.bytes, resources.memory_headroom, floor_bytes)
    candidates = _candidates(nodes)
    gpu_like = [c for c in candidates if c.kind in ("MIG", "GPU")]
    accelerator = resources.accelerator
    # Auto: GPUs when the cluster has any (see the module docstring), else CPU.
    auto = {"MIG", "GPU"} if gpu_like else {"CPU"}
    allowed = auto if accelerator == "Auto" else {accelerator}
    pool = [c for c in candidates if c.kind in allowed]
    need_text = _need_text(peak, resources.memory_headroom, need, floor_bytes)

    if accelerator == "CPU" and resources.memory is not None and floor_bytes == 0:
        # The user stated the runner's memory: use it as is, if some node can hold it.
        stated = parse_quantity(resources.memory)
        fitting = [c for c in pool if c.memory_bytes >= stated]
        if not fitting:
            return NoFit(
                stated,
                peak,
                _no_fit_text(f"spec.resources.memory {resources.memory}", pool, accelerator),
            )
        return SizingDecision(
            kind="CPU",
            resource=CPU_MEMORY,
            quantity=resources.memory,
            memory_bytes=stated,
            required_bytes=stated,
            peak=peak,
            reason=f"CPU runner with spec.resources.memory {resources.memory}",
        )

    cpu_need = max(need + RUNNER_PROCESS_BYTES, floor_bytes)
    cpu_only = {c.kind for c in pool} == {"CPU"}
    if cpu_only:
        need_text = _need_text(peak, resources.memory_headroom, cpu_need, floor_bytes, cpu=True)

    def needed(c: Candidate) -> int:
        return cpu_need if c.kind == "CPU" else need

    fitting = [c for c in pool if c.memory_bytes >= needed(c)]
    if not fitting:
        return NoFit(
            cpu_need if cpu_only else need, peak, _no_fit_text(need_text, pool, accelerator)
        )
    order = {"MIG": 0, "GPU": 1, "CPU": 2}
    best = min(fitting, key=lambda c: (c.memory_bytes, order[c.kind], c.resource))
    if best.kind == "CPU":
        quantity = format_bytes(cpu_need)
        memory = parse_quantity(quantity)
        where = f"{len(best.nodes)} node(s) with at least that much memory"
        text = _need_text(peak, resources.memory_headroom, cpu_need, floor_bytes, cpu=True)
        return SizingDecision(
            "CPU", CPU_MEMORY, quantity, memory, cpu_need, peak, f"{text} -> CPU, {where}"
        )
    others = len(fitting) - 1
    reason = (
        f"{need_text} -> {best.resource} ({format_bytes(best.memory_bytes)}; "
        f"{best.available} on {len(best.nodes)} node(s)"
        + (f"; smallest of {others + 1} that fit" if others else "")
        + ")"
    )
    return SizingDecision(best.kind, best.resource, "1", best.memory_bytes, need, peak, reason)


def _need_text(peak: Peak, headroom: str, need: int, floor_bytes: int, *, cpu: bool = False) -> str:
    text = (
        f"needs {format_bytes(need)} (peak {format_bytes(peak.bytes)} by {peak.method} "
        f"+ {float(parse_number(headroom)):.0%} headroom"
    )
    if cpu:
        text += f" + {format_bytes(RUNNER_PROCESS_BYTES)} runner process"
    if floor_bytes and floor_bytes >= need:
        text += f", at least {format_bytes(floor_bytes)} after OOMKilled"
    return text + ")"


def _no_fit_text(need_text: str, pool: list[Candidate], accelerator: str) -> str:
    kinds = {"Auto": "GPU, MIG slice", "GPU": "whole GPU", "MIG": "MIG slice", "CPU": "CPU node"}
    if not pool:
        return (
            f"{need_text}, but no node advertises a {kinds[accelerator]} "
            f"(spec.resources.accelerator: {accelerator})"
        )
    largest = max(pool, key=lambda c: c.memory_bytes)
    if largest.kind == "CPU":
        what = f"node {largest.nodes[0]} with {format_bytes(largest.memory_bytes)} of memory"
    else:
        what = f"{largest.resource} with {format_bytes(largest.memory_bytes)} on {largest.nodes[0]}"
    return (
        f"{need_text}, but the largest {kinds[accelerator]} in the cluster is {what} "
        f"(spec.resources.accelerator: {accelerator}); shrink the search space's largest "
        "configuration or set spec.resources.peakMemory if the estimate is wrong"
    )


# --------------------------------------------------------------------------- the estimate


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
    recorded: Mapping[str, Any] | None,
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
    if resources.peak_memory is not None:
        return Peak(parse_quantity(resources.peak_memory), "Spec")
    if resources.accelerator == "CPU" and resources.memory is not None:
        return Peak(parse_quantity(resources.memory), "Memory")
    key = estimate_key(spec)
    if recorded and recorded.get("estimateKey") == key:
        peak = recorded.get("peakBytes")
        if isinstance(peak, int) and peak > 0:
            return Peak(peak, str(recorded.get("method") or "Estimate"))
    if estimate_message is not None:
        parsed = parse_estimate_message(estimate_message)
        if isinstance(parsed, Peak):
            return parsed
        return PeakFailed(key, parsed)
    if estimate_failed is not None:
        return PeakFailed(key, estimate_failed)
    return PeakPending(key, "estimating peak memory of the largest configuration")
