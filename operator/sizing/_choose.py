"""Which resource runner pods request, how many pods, and how many runner processes share each
pod's device: ``spec.resources.parallelism`` trials at once laid onto what the nodes advertise
with the least device memory reserved (one trial: the smallest resource that fits).

Pure functions over plain inputs (node inventory, a peak-memory figure, ``spec.resources``).
``accelerator: Auto`` chooses among GPUs and MIG slices when the cluster advertises any, and
CPU only when it advertises no GPU at all: a model that fits no GPU must not silently train on
CPU for days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from hpo_operator.sizing._layout import (
    Layout,
    Need,
    Needs,
    format_bytes,
    rounded_up,
)
from hpo_operator.sizing._nodes import CPU_MEMORY, Candidate, Kind, NodeInfo, candidates
from hpo_operator.sizing._packing import packing_text, trials_per_device
from hpo_operator.sizing._peak import Peak

from kubetune_api.spec import StudySpec

__all__ = [
    "NoFit",
    "Sizing",
    "SizingDecision",
    "choose_resource",
    "next_floor",
]


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
        trials_per_device: The most runner processes one pod runs on its device (pods'
            counts differ by at most one: :meth:`processes`).
        packing: Estimated peak × trials per device ÷ device memory, as text (GPU and MIG).
        pods: Runner pods.
        trials: Trials that run at once over all pods (``spec.resources.parallelism``);
            ``None``: ``pods`` × ``trials_per_device``.
        precision: The precision the GPU was sized at, when the estimate had figures per
            precision (:class:`~._peak.GpuPeak`).
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
    pods: int = 1
    trials: int | None = None
    precision: str | None = None

    def processes(self, index: int) -> int:
        """Runner processes of runner pod ``index``: the trials spread evenly over the pods,
        the first ones taking the remainder."""
        if self.trials is None:
            return self.trials_per_device
        base, extra = divmod(self.trials, self.pods)
        return base + (1 if index < extra else 0)

    def for_pod(self, index: int) -> SizingDecision:
        """The decision as runner pod ``index`` takes it: its own number of processes."""
        return replace(self, trials_per_device=self.processes(index))


@dataclass(frozen=True)
class NoFit:
    """Nothing the cluster advertises can hold a runner; ``reason`` says what was needed."""

    required_bytes: int
    peak: Peak
    reason: str


Sizing = SizingDecision | NoFit


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
    """The resource and runner pods for ``spec.resources.parallelism`` trials at once, each
    needing ``peak`` plus headroom, honouring ``accelerator`` and ``trialsPerDevice``.

    ``parallelism`` is how many trials run; the layout only decides where. A device holds as
    many processes as fit it (:mod:`._packing`; ``trialsPerDevice`` at most, never more than
    ``parallelism``), and the trials take as few pods of that resource as they can, spread
    evenly. Among the resources, the one whose pods reserve the least device memory in all
    wins (:meth:`Layout.cost`): one trial gets the smallest resource that fits, eight small
    ones share a GPU rather than take eight. A resource the cluster has too few of for the
    pods comes last; on a tie, fewer processes per device (a slice isolates its trial), then
    MIG, then the smaller resource.

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

    needs = Needs(spec, peak, floor_bytes)
    trials = resources.parallelism
    wanted = resources.trials_per_device_count
    # Never more processes on a device than trials run at once.
    wanted_here = min(wanted, trials) if wanted is not None else None
    limit = min(trials_limit or trials, trials)

    def layouts(micro_batched: bool) -> list[Layout]:
        found_layouts: list[Layout] = []
        for c in pool:
            need = needs.of(c, micro_batched)
            if c.kind == "CPU":
                # A CPU runner has no device to share: Auto runs one process per pod there.
                n = trials_per_device(
                    c.memory_bytes, need.bytes, wanted_here or 1, limit, shared_cost=0
                )
            else:
                n = trials_per_device(c.memory_bytes, need.bytes, wanted_here, limit)
            if n:
                found_layouts.append(Layout(c, n, trials, need))
        return found_layouts

    fitting = layouts(micro_batched=False)
    if not fitting and peak.gpu:
        # The full batch fits no GPU: runners micro-batch on the one that holds the most.
        fitting = layouts(micro_batched=True)
    if not fitting:
        largest = max(pool, key=lambda c: c.memory_bytes, default=None)
        need = needs.of(largest, micro_batched=bool(peak.gpu)) if largest else needs.cpu()
        asked = _times((wanted_here or 1) if need.cpu else wanted_here, trials_limit)
        return NoFit(need.bytes, peak, _no_fit_text(need.text + asked, pool, accelerator))
    best = min(fitting, key=Layout.cost)
    need = best.need
    if best.candidate.kind == "CPU":
        quantity, memory = rounded_up(need.bytes)
        where = f"{len(best.candidate.nodes)} node(s) with at least that much memory"
        return SizingDecision(
            "CPU",
            CPU_MEMORY,
            quantity,
            memory,
            need.bytes,
            peak,
            f"{need.text} -> CPU, {where}; {best.text()}",
            trials_per_device=best.per_pod,
            pods=best.pods,
            trials=trials,
        )
    return _device_decision(best, len(fitting), peak)


def _device_decision(best: Layout, fitting: int, peak: Peak) -> SizingDecision:
    """A GPU or MIG slice per pod, shared by its runner processes."""
    c, count, need = best.candidate, best.per_pod, best.need
    packing = packing_text(need.peak_bytes, count, c.memory_bytes)
    shared = (
        f", {count} trials per device, packing {packing} (peak x trials / device memory)"
        if count > 1
        else ""
    )
    reason = (
        f"{need.text} -> {c.resource} ({format_bytes(c.memory_bytes)}; "
        f"{c.available} on {len(c.nodes)} node(s)"
        + (f"; least device memory of {fitting} that fit" if fitting > 1 else "")
        + f"); {best.text()}{shared}"
    )
    return SizingDecision(
        c.kind,
        c.resource,
        "1",
        c.memory_bytes,
        need.bytes,
        peak,
        reason,
        count,
        packing,
        pods=best.pods,
        trials=best.trials,
        precision=need.precision,
    )


def _stated_cpu_memory(
    pool: list[Candidate], spec: StudySpec, peak: Peak, trials_limit: int | None
) -> Sizing:
    """The user stated each CPU runner process's memory: use it as is, if a node holds the
    pod's processes."""
    resources = spec.resources
    stated = resources.memory_bytes
    assert stated is not None and resources.memory is not None
    trials = resources.parallelism
    wanted = min(resources.trials_per_device_count or 1, trials)
    limit = min(trials_limit or trials, trials)
    need = Need(stated, stated, f"spec.resources.memory {resources.memory}", cpu=True)
    layouts = [
        Layout(c, n, trials, need)
        for c in pool
        if (n := trials_per_device(c.memory_bytes, stated, wanted, limit, shared_cost=0))
    ]
    if not layouts:
        what = f"spec.resources.memory {resources.memory}{_times(wanted, trials_limit)}"
        return NoFit(stated, peak, _no_fit_text(what, pool, "CPU"))
    best = layouts[0]
    return SizingDecision(
        kind="CPU",
        resource=CPU_MEMORY,
        quantity=resources.memory,
        memory_bytes=stated,
        required_bytes=stated,
        peak=peak,
        reason=f"CPU runner with spec.resources.memory {resources.memory}; {best.text()}",
        trials_per_device=best.per_pod,
        pods=best.pods,
        trials=trials,
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
