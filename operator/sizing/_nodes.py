"""What sizing needs to know of the cluster's nodes: the resources they advertise and their
memory.

* MIG slice (mixed strategy) ``nvidia.com/mig-<g>g.<mem>gb``: the node label
  ``nvidia.com/mig-<g>g.<mem>gb.memory`` (MiB) that GPU Feature Discovery sets, else ``<mem>``
  decimal gigabytes (10**9 bytes) read from the profile name, which errs on the safe side (a
  1g.10gb slice of an A100-80GB has about 9.5 GiB).
* Whole GPU ``nvidia.com/gpu``: the node label ``nvidia.com/gpu.memory`` (MiB), as GPU Feature
  Discovery sets it; with the MIG *single* strategy GFD sets that label to the slice's memory,
  so single-strategy slices are sized right too. A GPU node without the label cannot be sized
  and is skipped.
* CPU: the node's allocatable ``memory``. A node whose memory is not a quantity is skipped, and
  :func:`candidates` says so (the note reaches the sizing reason in the study's status).

Whether a GPU computes bfloat16 natively (compute capability 8.0 or newer, which decides the
precision ``training.precision: Auto`` trains at) comes from GPU Feature Discovery's
``nvidia.com/gpu.compute.major`` label; MIG slices always do (MIG needs Ampere or newer). A GPU
without the label is taken not to (it is sized at FP32, the larger figure).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune_api.spec import parse_quantity

__all__ = [
    "CPU_MEMORY",
    "GPU",
    "GPU_MEMORY_LABEL",
    "Candidate",
    "Kind",
    "NodeInfo",
    "candidates",
    "mig_memory_bytes",
    "node_info",
]

#: The resource name of CPU runners' memory (requests and limits).
CPU_MEMORY = "memory"
GPU = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
#: The first compute capability with native bfloat16 (Ampere).
BF16_COMPUTE_MAJOR = 8
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
    native_bf16: bool = False  # GPUs and MIG slices that compute bfloat16 natively


def candidates(nodes: Iterable[NodeInfo]) -> tuple[list[Candidate], list[str]]:
    """The resources schedulable nodes advertise, and a note for each node skipped because a
    quantity it advertises cannot be read."""
    found: dict[tuple[str, int, bool], tuple[Kind, list[str], int]] = {}
    skipped: list[str] = []

    def add(
        kind: Kind, resource: str, memory: int, node: str, units: int, bf16: bool = False
    ) -> None:
        key = (resource, memory, bf16)
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
                add("MIG", resource, memory, node.name, units, bf16=True)
        gpus = _count(node.allocatable.get(GPU, "0"))
        label = node.labels.get(GPU_MEMORY_LABEL)
        if gpus > 0 and label and label.isdigit():
            major = node.labels.get(COMPUTE_MAJOR_LABEL, "")
            bf16 = major.isdigit() and int(major) >= BF16_COMPUTE_MAJOR
            add("GPU", GPU, int(label) * 2**20, node.name, gpus, bf16)
        memory_text = node.allocatable.get(CPU_MEMORY)
        if memory_text:
            try:
                # Usually "16Gi" or "16384Ki"; plain bytes are quantities too.
                add("CPU", CPU_MEMORY, parse_quantity(memory_text), node.name, 1)
            except ValueError:
                skipped.append(
                    f"node {node.name} skipped: its allocatable memory {memory_text!r} is not "
                    "a quantity"
                )
    found_candidates = [
        Candidate(kind, resource, memory, tuple(sorted(names)), total, bf16)
        for (resource, memory, bf16), (kind, names, total) in found.items()
    ]
    return found_candidates, skipped
