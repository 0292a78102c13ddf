"""Simulated nodes (GPU, MIG and CPU-only) for the e2e cluster, played by kwok.

A cluster is described as a list of :class:`NodeGroup`; :func:`create_nodes` makes the Node
objects with the capacity and labels a real node would have (see ``gpu_catalog``), annotated
for the kwok process that :class:`controlplane.ControlPlane` runs, and waits until they are Ready
and schedulable. kube-scheduler then places pods on them for real.

Example, 2 nodes with 8 H100 each, 1 A100-80GB node with 7 x 1g.10gb per GPU, 3 CPU nodes::

    create_nodes(api_client, [
        NodeGroup(count=2, gpu="H100-80GB", gpus=8),
        NodeGroup(count=1, gpu="A100-80GB", gpus=1, mig={"1g.10gb": 7}),
        NodeGroup(count=3, cpu="16", memory="64Gi"),
    ])
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from tests.harness.gpu_catalog import gpu_model, node_gpu_labels, node_gpu_resources

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes

__all__ = ["SIMULATED_NODE_LABEL", "NodeGroup", "create_nodes", "delete_nodes", "node_manifest"]

SIMULATED_NODE_LABEL = "kubetune.dev/simulated-node"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# Taints the node lifecycle controller keeps until it has seen the node Ready.
_STARTUP_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


@dataclass(frozen=True)
class NodeGroup:
    """``count`` identical simulated nodes.

    Attributes:
        count: How many nodes.
        gpu: A GPU model key of ``gpu_catalog.GPU_MODELS`` (e.g. ``"H100-80GB"``); None for a
            CPU-only node.
        gpus: GPUs per node (required with ``gpu``).
        mig: MIG layout per GPU, profile -> instances (e.g. ``{"1g.10gb": 7}``); the node then
            advertises MIG devices in the mixed strategy instead of whole GPUs.
        cpu: CPU capacity; default 16 for CPU nodes, 8 per GPU (at least 16) for GPU nodes.
        memory: Memory capacity; default 64Gi for CPU nodes, 128Gi per GPU for GPU nodes.
        pods: Pod capacity.
        labels: Extra node labels.
        taints: Node taints, as Kubernetes dicts (``{"key":…, "value":…, "effect":…}``).
        name: Name prefix; default from the GPU model (``h100-80gb``) or ``cpu``.
    """

    count: int = 1
    gpu: str | None = None
    gpus: int = 0
    mig: Mapping[str, int] | None = None
    cpu: str | None = None
    memory: str | None = None
    pods: str = "110"
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"NodeGroup.count must be at least 1, got {self.count}")
        if self.gpu is None and (self.gpus or self.mig):
            raise ValueError("NodeGroup.gpus and NodeGroup.mig need NodeGroup.gpu (a GPU model)")
        if self.gpu is not None:
            model = gpu_model(self.gpu)
            if self.gpus < 1:
                raise ValueError(f"NodeGroup.gpus must be at least 1 for gpu={self.gpu!r}")
            node_gpu_resources(model, self.gpus, self.mig)  # validates the MIG layout

    @property
    def prefix(self) -> str:
        return self.name or (self.gpu.lower() if self.gpu else "cpu")

    def capacity(self) -> dict[str, str]:
        if self.gpu is None:
            return {"cpu": self.cpu or "16", "memory": self.memory or "64Gi", "pods": self.pods}
        resources = {
            "cpu": self.cpu or str(max(16, 8 * self.gpus)),
            "memory": self.memory or f"{128 * self.gpus}Gi",
            "pods": self.pods,
        }
        resources.update(node_gpu_resources(gpu_model(self.gpu), self.gpus, self.mig))
        return resources

    def node_labels(self) -> dict[str, str]:
        labels = dict(self.labels)
        if self.gpu is not None:
            labels.update(node_gpu_labels(gpu_model(self.gpu), self.gpus, self.mig))
        return labels


def node_manifest(name: str, group: NodeGroup, internal_ip: str) -> dict[str, Any]:
    """The Node object for one node of ``group``; status included, as kwok expects."""
    capacity = group.capacity()
    capacity.setdefault("ephemeral-storage", "500Gi")
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                SIMULATED_NODE_LABEL: "true",
                **group.node_labels(),
            },
        },
        "spec": {"taints": [dict(t) for t in group.taints]} if group.taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
        },
    }


# Addresses of simulated nodes, unique within a test run (kwok's pod IPs are in 10.244.0.0/16).
_node_numbers = itertools.count(1)


def _next_internal_ip() -> str:
    number = next(_node_numbers)
    return f"10.200.{number // 250 % 250}.{number % 250 + 1}"


def _schedulable(node: Any) -> bool:
    conditions = {c.type: c.status for c in (node.status.conditions or [])}
    taints = {t.key for t in (node.spec.taints or [])}
    return conditions.get("Ready") == "True" and not taints & _STARTUP_TAINTS


def create_nodes(
    api_client: Any, groups: Sequence[NodeGroup], *, timeout: float = 60.0
) -> list[str]:
    """Create the nodes of ``groups`` and wait until all are Ready and schedulable.

    Names are ``<prefix>-<random>-<index>``, so several clusters can coexist.

    Returns:
        The node names, in the order of ``groups``.
    """
    core = k8s.client.CoreV1Api(api_client)
    names: list[str] = []
    for group in groups:
        batch = uuid.uuid4().hex[:5]
        for index in range(group.count):
            name = f"{group.prefix}-{batch}-{index}"
            core.create_node(node_manifest(name, group, _next_internal_ip()))
            names.append(name)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            if _schedulable(core.read_node(name)):
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"simulated nodes not Ready after {timeout:.0f}s: {', '.join(sorted(pending))}; "
                "is kwok running (see its log in the control plane's work dir)?"
            )
        time.sleep(0.2)
    return names


def delete_nodes(api_client: Any, names: Sequence[str]) -> None:
    """Delete the nodes (those already gone are fine)."""
    core = k8s.client.CoreV1Api(api_client)
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise
