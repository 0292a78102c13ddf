"""Where trials run: the resources of runner processes and the runner pods' own part."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field

from kubetune_api.spec._base import (
    MAX_TRIALS_PER_DEVICE,
    QUANTITY_PATTERN,
    QUEUE_NAME_PATTERN,
    Number,
    SpecModel,
)
from kubetune_api.spec._parse import parse_number, parse_quantity


class Resources(SpecModel):
    accelerator: Literal["Auto", "GPU", "MIG", "CPU"] = "Auto"
    parallelism: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Trials that run at once (runner processes). The operator lays them onto "
        "runner pods: several processes in one pod when they fit its device "
        "(trialsPerDevice), else more pods.",
    )
    memory_headroom: Number = Field(default="0.1", description="Fraction added to the estimate.")
    peak_memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Peak training memory of the largest configuration; skips the estimate.",
    )
    cpu: str | None = Field(
        default=None,
        pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$",
        description="CPU request of each runner process (a pod asks it once per process).",
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Memory of each runner process (a pod asks it once per process).",
    )
    trials_per_device: (
        Annotated[int, Field(ge=1, le=MAX_TRIALS_PER_DEVICE)]
        | Annotated[str, Field(pattern=r"^Auto$")]
    ) = Field(
        default="Auto",
        description="The most runner processes (trials) one runner pod runs on its one device "
        "(a GPU, a MIG slice or a CPU runner's memory): Auto (as many as the memory estimate "
        "lets share a GPU or MIG slice, at most 8; 1 on CPU) or a number. Never more than "
        "parallelism: it lays the trials out, it does not add to them.",
    )
    queue_name: str | None = Field(
        default=None,
        pattern=QUEUE_NAME_PATTERN,
        max_length=63,
        description="Kueue LocalQueue that admits the runner pods (their "
        "kueue.x-k8s.io/queue-name label); default: the HPOStudy's own label of that name.",
    )

    @cached_property
    def headroom_fraction(self) -> float:
        """``memoryHeadroom`` as a number (0.1 = 10% above the estimate)."""
        return parse_number(self.memory_headroom)

    @cached_property
    def peak_memory_bytes(self) -> int | None:
        return parse_quantity(self.peak_memory) if self.peak_memory else None

    @cached_property
    def memory_bytes(self) -> int | None:
        return parse_quantity(self.memory) if self.memory else None

    @property
    def trials_per_device_count(self) -> int | None:
        """``trialsPerDevice`` as a number, or ``None`` for ``Auto``."""
        return self.trials_per_device if isinstance(self.trials_per_device, int) else None


#: ``/dev/shm`` of a runner process without data-loader workers, and what each worker adds: room
#: for its prefetched batches (two by default) of several MiB each.
SHARED_MEMORY_BASE = 64 * 2**20
SHARED_MEMORY_PER_WORKER = 256 * 2**20


class Runner(SpecModel):
    """How runner pods (and the estimate pod) are made beyond what kubetune sizes."""

    template: dict[str, Any] | None = Field(
        default=None,
        description="A PodTemplateSpec merged into every runner pod and the estimate pod: "
        "labels and annotations; volumes, init containers, node selector, affinity, "
        "tolerations, topology spread, image pull secrets, service account, priority, runtime "
        "and scheduler; fsGroup and supplemental groups; and for the container named runner "
        "its env, envFrom, volume mounts and resources other than CPU, memory and GPUs. "
        "Applies on a cluster only.",
    )
    shared_memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="Size of the memory-backed /dev/shm of each runner process (counted in the "
        "pod's memory); default 64Mi plus 256Mi per training.dataLoaderWorkers.",
    )

    def shared_memory_bytes(self, data_loader_workers: int) -> int:
        """``/dev/shm`` of one runner process: ``sharedMemory``, else sized from its workers."""
        if self.shared_memory:
            return parse_quantity(self.shared_memory)
        return SHARED_MEMORY_BASE + SHARED_MEMORY_PER_WORKER * data_loader_workers
