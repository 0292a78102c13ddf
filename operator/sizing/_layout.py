"""What one runner process needs on each kind of resource, and how a study's trials are laid
onto devices of one kind (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_operator.sizing._nodes import Candidate
from hpo_operator.sizing._peak import Peak

from kubetune_api.spec import StudySpec, device_precision

__all__ = [
    "RUNNER_PROCESS_BYTES",
    "Layout",
    "Need",
    "Needs",
    "format_bytes",
    "need_text",
    "required_bytes",
    "rounded_up",
]


def format_bytes(value: int) -> str:
    """``13958643712`` → ``"13Gi"``; Mi precision below 10Gi. Rounds up."""
    return rounded_up(value)[0]


def rounded_up(value: int) -> tuple[str, int]:
    """The quantity :func:`format_bytes` writes for ``value``, and the bytes it stands for."""
    if value / 2**30 >= 10 or value % 2**30 == 0:
        gib = math.ceil(value / 2**30)
        return f"{gib}Gi", gib * 2**30
    mib = math.ceil(value / 2**20)
    return f"{mib}Mi", mib * 2**20


#: What a CPU runner needs besides its training step: the Python process with torch imported
#: (about 640 MiB resident), the task's data and the allocator's cached memory (10-40% above the
#: live tensors on CPU, see docs/benchmarks.md). GPU runners keep these in host memory, which
#: the device-memory sizing does not cover.
RUNNER_PROCESS_BYTES = 2**30


def required_bytes(peak_bytes: int, headroom: float, floor_bytes: int = 0) -> int:
    """Peak plus the fractional headroom, at least ``floor_bytes`` (raised after an OOM)."""
    return max(math.ceil(peak_bytes * (1 + headroom)), floor_bytes)


@dataclass(frozen=True)
class Need:
    """What one runner process needs on a candidate, and the text that says why."""

    bytes: int
    peak_bytes: int
    text: str
    precision: str | None = None  # GPUs and MIG slices
    cpu: bool = False


class Needs:
    """The need of one runner process on each candidate: on CPU the peak, plus the runner
    process; on a GPU the peak at the precision it trains at (the full batch, or micro-batches
    of one sample when no GPU holds that); plus the headroom, at least the OOM floor."""

    def __init__(self, spec: StudySpec, peak: Peak, floor_bytes: int) -> None:
        self.spec, self.peak, self.floor = spec, peak, floor_bytes
        self.headroom = spec.resources.headroom_fraction

    def cpu(self) -> Need:
        peak = self.peak
        need = max(
            required_bytes(peak.bytes, self.headroom, self.floor) + RUNNER_PROCESS_BYTES,
            self.floor,
        )
        text = need_text(peak.bytes, peak.method, self.headroom, need, self.floor, cpu=True)
        return Need(need, peak.bytes, text, cpu=True)

    def of(self, c: Candidate, micro_batched: bool) -> Need:
        if c.kind == "CPU":
            return self.cpu()
        peak = self.peak
        precision = device_precision(self.spec.training.precision, c.native_bf16)
        peak_bytes = peak.on_gpu(precision, micro_batched=micro_batched)
        need = required_bytes(peak_bytes, self.headroom, self.floor)
        at = ""
        if peak.gpu:
            at = f" at {precision}" + (", micro-batches of one sample" if micro_batched else "")
        text = need_text(peak_bytes, peak.method + at, self.headroom, need, self.floor)
        return Need(need, peak_bytes, text, precision if peak.gpu else None)


_KIND_ORDER = {"MIG": 0, "GPU": 1, "CPU": 2}


@dataclass(frozen=True)
class Layout:
    """``trials`` runner processes laid onto devices of one candidate that each hold at most
    ``fit``: as few pods as that allows, the processes spread evenly over them."""

    candidate: Candidate
    fit: int
    trials: int
    need: Need

    @property
    def pods(self) -> int:
        return math.ceil(self.trials / self.fit)

    @property
    def per_pod(self) -> int:
        """The most processes one pod runs (pods' counts differ by at most one)."""
        return math.ceil(self.trials / self.pods)

    def cost(self) -> tuple[bool, int, int, int, int, str]:
        """What the choice minimises: first a layout the cluster has enough of that resource
        for; then the device memory all the pods reserve; then fewer processes per device
        (a slice isolates its trial), MIG, the smaller resource."""
        c = self.candidate
        return (
            self.pods > c.available,
            self.pods * c.memory_bytes,
            self.per_pod,
            _KIND_ORDER[c.kind],
            c.memory_bytes,
            c.resource,
        )

    def text(self) -> str:
        pods = f"{self.pods} runner pod{'s' if self.pods > 1 else ''}"
        if self.per_pod == 1:
            return f"{pods} for {self.trials} trial{'s' if self.trials > 1 else ''} at once"
        uneven = "up to " if self.trials % self.pods else ""
        return f"{pods} of {uneven}{self.per_pod} runner processes for {self.trials} trials at once"


def need_text(
    peak_bytes: int,
    method: str,
    headroom: float,
    need: int,
    floor_bytes: int,
    *,
    cpu: bool = False,
) -> str:
    text = (
        f"needs {format_bytes(need)} (peak {format_bytes(peak_bytes)} by {method} "
        f"+ {headroom:.0%} headroom"
    )
    if cpu:
        text += f" + {format_bytes(RUNNER_PROCESS_BYTES)} runner process"
    if floor_bytes and floor_bytes >= need:
        text += f", at least {format_bytes(floor_bytes)} after OOMKilled"
    return text + ")"
