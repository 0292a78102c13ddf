"""Which resource a runner pod requests: the smallest that fits, from what nodes advertise.

Pure functions over plain inputs (node inventory, a peak-memory figure, ``spec.resources``).
``accelerator: Auto`` chooses among GPUs and MIG slices when the cluster advertises any, and
CPU only when it advertises no GPU at all: a model that fits no GPU must not silently train on
CPU for days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from hpo_operator.sizing._nodes import CPU_MEMORY, Candidate, Kind, NodeInfo, candidates
from hpo_operator.sizing._peak import Peak

from trial_runner.spec import StudySpec

__all__ = [
    "RUNNER_PROCESS_BYTES",
    "NoFit",
    "Sizing",
    "SizingDecision",
    "choose_resource",
    "format_bytes",
    "next_floor",
    "required_bytes",
]


def format_bytes(value: int) -> str:
    """``13958643712`` → ``"13Gi"``; Mi precision below 10Gi. Rounds up."""
    return _rounded_up(value)[0]


def _rounded_up(value: int) -> tuple[str, int]:
    """The quantity :func:`format_bytes` writes for ``value``, and the bytes it stands for."""
    if value / 2**30 >= 10 or value % 2**30 == 0:
        gib = math.ceil(value / 2**30)
        return f"{gib}Gi", gib * 2**30
    mib = math.ceil(value / 2**20)
    return f"{mib}Mi", mib * 2**20


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


def required_bytes(peak_bytes: int, headroom: float, floor_bytes: int = 0) -> int:
    """Peak plus the fractional headroom, at least ``floor_bytes`` (raised after an OOM)."""
    return max(math.ceil(peak_bytes * (1 + headroom)), floor_bytes)


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

    Nodes skipped because a quantity they advertise cannot be read are named at the end of
    the decision's reason.
    """
    found, skipped = candidates(nodes)
    sizing = _choose(found, spec, peak, floor_bytes)
    if not skipped:
        return sizing
    return replace(sizing, reason="; ".join([sizing.reason, *skipped]))


def _choose(found: list[Candidate], spec: StudySpec, peak: Peak, floor_bytes: int) -> Sizing:
    resources = spec.resources
    headroom = resources.headroom_fraction
    need = required_bytes(peak.bytes, headroom, floor_bytes)
    gpu_like = [c for c in found if c.kind in ("MIG", "GPU")]
    accelerator = resources.accelerator
    # Auto: GPUs when the cluster has any (see the module docstring), else CPU.
    auto = {"MIG", "GPU"} if gpu_like else {"CPU"}
    allowed = auto if accelerator == "Auto" else {accelerator}
    pool = [c for c in found if c.kind in allowed]
    need_text = _need_text(peak, headroom, need, floor_bytes)

    if accelerator == "CPU" and resources.memory is not None and floor_bytes == 0:
        # The user stated the runner's memory: use it as is, if some node can hold it.
        stated = resources.memory_bytes
        assert stated is not None
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
        need_text = _need_text(peak, headroom, cpu_need, floor_bytes, cpu=True)

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
        quantity, memory = _rounded_up(cpu_need)
        where = f"{len(best.nodes)} node(s) with at least that much memory"
        text = _need_text(peak, headroom, cpu_need, floor_bytes, cpu=True)
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


def _need_text(
    peak: Peak, headroom: float, need: int, floor_bytes: int, *, cpu: bool = False
) -> str:
    text = (
        f"needs {format_bytes(need)} (peak {format_bytes(peak.bytes)} by {peak.method} "
        f"+ {headroom:.0%} headroom"
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
