"""Which resource a runner pod requests, and how many runner processes share it: the least
memory per trial among what the nodes advertise (the smallest that fits, with one trial per
device).

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
from hpo_operator.sizing._packing import packing_text, trials_per_device
from hpo_operator.sizing._peak import Peak

from kubetune_api.spec import StudySpec

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
    """The resource each runner pod requests, and how many runner processes share it.

    Attributes:
        kind: MIG, GPU or CPU.
        resource: The extended resource (``nvidia.com/mig-2g.20gb``, ``nvidia.com/gpu``) or
            ``memory`` for CPU runners.
        quantity: What one runner process needs of ``resource`` (``"1"`` for GPUs, which the
            processes share; ``"1536Mi"`` of memory, which the pod asks for each process).
        memory_bytes: Device memory the runner gets (CPU: one process's memory limit).
        required_bytes: Peak estimate plus headroom (and the OOM floor), per process.
        peak: The peak estimate the decision started from.
        reason: One line for status and events.
        trials_per_device: Runner processes the pod runs on the device.
        packing: Estimated peak × trials per device ÷ device memory, as text (GPU and MIG).
    """

    kind: Kind
    resource: str
    quantity: str
    memory_bytes: int
    required_bytes: int
    peak: Peak
    reason: str
    trials_per_device: int = 1
    packing: str | None = None


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
    trials_limit: int | None = None,
) -> Sizing:
    """The resource with the least memory per trial that fits ``peak`` plus headroom,
    honouring ``accelerator`` and ``trialsPerDevice``.

    With one trial per device that is the smallest resource that fits. With several
    (:mod:`._packing`), a whole GPU shared by ``n`` runner processes is compared with MIG
    slices (and larger slices shared too) by device memory per trial; on a tie the resource
    with fewer processes wins (a slice isolates its trial), then MIG, then the smaller one.

    Args:
        nodes: The cluster's nodes.
        spec: The study spec (``resources.accelerator``, ``memoryHeadroom``, ``memory``,
            ``trialsPerDevice``).
        peak: Peak training memory of the largest configuration.
        floor_bytes: Least memory after an OOMKilled runner (see :func:`next_floor`).
        trials_limit: The most trials per device after a pod's processes kept running out
            of memory (see :func:`~hpo_operator.sizing.lowered_trials_per_device`).

    Nodes skipped because a quantity they advertise cannot be read are named at the end of
    the decision's reason.
    """
    found, skipped = candidates(nodes)
    sizing = _choose(found, spec, peak, floor_bytes, trials_limit)
    if not skipped:
        return sizing
    return replace(sizing, reason="; ".join([sizing.reason, *skipped]))


def _choose(
    found: list[Candidate],
    spec: StudySpec,
    peak: Peak,
    floor_bytes: int,
    trials_limit: int | None,
) -> Sizing:
    resources = spec.resources
    accelerator = resources.accelerator
    # Auto: GPUs when the cluster has any (see the module docstring), else CPU.
    gpu_like = any(c.kind in ("MIG", "GPU") for c in found)
    allowed = ({"MIG", "GPU"} if gpu_like else {"CPU"}) if accelerator == "Auto" else {accelerator}
    pool = [c for c in found if c.kind in allowed]
    if accelerator == "CPU" and resources.memory is not None and floor_bytes == 0:
        return _stated_cpu_memory(pool, spec, peak, trials_limit)

    headroom = resources.headroom_fraction
    need = required_bytes(peak.bytes, headroom, floor_bytes)
    cpu_need = max(need + RUNNER_PROCESS_BYTES, floor_bytes)
    wanted = resources.trials_per_device_count

    def processes(c: Candidate) -> int:
        if c.kind == "CPU":
            # A CPU runner has no device to share: Auto runs one process per pod there.
            return trials_per_device(
                c.memory_bytes, cpu_need, wanted or 1, trials_limit, shared_cost=0
            )
        return trials_per_device(c.memory_bytes, need, wanted, trials_limit)

    fitting = [(c, n) for c in pool if (n := processes(c))]
    cpu_only = {c.kind for c in pool} == {"CPU"}
    need_text = _need_text(
        peak, headroom, cpu_need if cpu_only else need, floor_bytes, cpu=cpu_only
    )
    if not fitting:
        asked = _times((wanted or 1) if cpu_only else wanted, trials_limit)
        return NoFit(
            cpu_need if cpu_only else need, peak, _no_fit_text(need_text + asked, pool, accelerator)
        )
    best, count = min(fitting, key=_least_memory_per_trial)
    if best.kind == "CPU":
        quantity, memory = _rounded_up(cpu_need)
        text = _need_text(peak, headroom, cpu_need, floor_bytes, cpu=True)
        where = f"{len(best.nodes)} node(s) with at least that much memory"
        return SizingDecision(
            "CPU",
            CPU_MEMORY,
            quantity,
            memory,
            cpu_need,
            peak,
            f"{text} -> CPU, {where}{_processes_text(count)}",
            trials_per_device=count,
        )
    return _device_decision(best, count, len(fitting), need, peak, need_text)


_KIND_ORDER = {"MIG": 0, "GPU": 1, "CPU": 2}


def _least_memory_per_trial(fit: tuple[Candidate, int]) -> tuple[float, int, int, int, str]:
    """Device memory per trial; then fewer processes (a slice isolates its trial), MIG, the
    smaller resource."""
    candidate, count = fit
    return (
        candidate.memory_bytes / count,
        count,
        _KIND_ORDER[candidate.kind],
        candidate.memory_bytes,
        candidate.resource,
    )


def _device_decision(
    best: Candidate, count: int, fitting: int, need: int, peak: Peak, need_text: str
) -> SizingDecision:
    """A GPU or MIG slice, shared by ``count`` runner processes."""
    packing = packing_text(peak.bytes, count, best.memory_bytes)
    shared = (
        f"; {count} trials per device, packing {packing} (peak x trials / device memory)"
        if count > 1
        else ""
    )
    reason = (
        f"{need_text} -> {best.resource} ({format_bytes(best.memory_bytes)}; "
        f"{best.available} on {len(best.nodes)} node(s)"
        + (f"; least memory per trial of {fitting} that fit" if fitting > 1 else "")
        + f"){shared}"
    )
    return SizingDecision(
        best.kind, best.resource, "1", best.memory_bytes, need, peak, reason, count, packing
    )


def _stated_cpu_memory(
    pool: list[Candidate], spec: StudySpec, peak: Peak, trials_limit: int | None
) -> Sizing:
    """The user stated each CPU runner process's memory: use it as is, if a node holds the
    pod's processes."""
    resources = spec.resources
    stated = resources.memory_bytes
    assert stated is not None and resources.memory is not None
    wanted = resources.trials_per_device_count or 1
    counts = [
        n
        for c in pool
        if (n := trials_per_device(c.memory_bytes, stated, wanted, trials_limit, shared_cost=0))
    ]
    if not counts:
        what = f"spec.resources.memory {resources.memory}{_times(wanted, trials_limit)}"
        return NoFit(stated, peak, _no_fit_text(what, pool, "CPU"))
    return SizingDecision(
        kind="CPU",
        resource=CPU_MEMORY,
        quantity=resources.memory,
        memory_bytes=stated,
        required_bytes=stated,
        peak=peak,
        reason=f"CPU runner with spec.resources.memory {resources.memory}"
        + _processes_text(counts[0]),
        trials_per_device=counts[0],
    )


def _times(wanted: int | None, limit: int | None) -> str:
    """What ``trialsPerDevice`` (and the limit) add to the needs of a study nothing fits."""
    if wanted is None:
        return ""
    count = min(wanted, limit or wanted)
    if count == 1:
        return ""
    lowered = f", lowered to {limit} after out-of-memory exits" if limit and limit < wanted else ""
    return f" x {count} trials per device (spec.resources.trialsPerDevice{lowered})"


def _processes_text(count: int) -> str:
    return f"; {count} runner processes per pod" if count > 1 else ""


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
