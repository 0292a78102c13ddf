"""GPU telemetry through NVML (nvidia-ml-py, imported as ``pynvml``).

The NVML device is found by the CUDA device's UUID, not its index: NVML numbers the host's GPUs
and ignores ``CUDA_VISIBLE_DEVICES``, and inside a MIG container index 0 is the parent GPU,
while the UUID names the MIG device itself. Memory is sampled always; utilisation where NVML
reports it (not on MIG devices).

Without NVML (no driver, no GPU) the runner is in CPU mode: that is logged once, not an error.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypedDict

import torch

__all__ = ["GpuMonitor", "GpuSummary", "nvml_handle"]

log = logging.getLogger("kubetune.telemetry")
_warned = False


class GpuSummary(TypedDict):
    """A trial's NVML samples (``None`` without NVML): keys of ``TrialTelemetry`` too."""

    gpu_utilization_mean: float | None
    gpu_memory_used_max: int | None


class GpuMonitor:
    """Samples GPU utilisation and memory in a background thread during a trial."""

    def __init__(self, handle: Any, interval: float = 0.5) -> None:
        self._handle = handle
        self._interval = interval
        self._samples: list[tuple[int | None, int]] = []  # (utilisation %, memory used)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def create(cls, device: torch.device) -> GpuMonitor:
        global _warned
        if device.type != "cuda":
            return _NoGpu()
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(nvml_handle(device))
        except Exception as exc:  # NVML missing or unusable: CPU-mode telemetry
            if not _warned:
                log.info("NVML unavailable (%s): GPU utilisation is not recorded", exc)
                _warned = True
            return _NoGpu()

    def reset(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubetune-nvml", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pynvml

        utilisation = True
        while not self._stop.wait(self._interval):
            try:
                used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            except Exception:
                return
            gpu: int | None = None
            if utilisation:
                try:
                    gpu = int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                except Exception:  # not supported on MIG devices: memory only from now on
                    utilisation = False
            self._samples.append((gpu, used))

    def summary(self) -> GpuSummary:
        self._stop.set()
        busy = [s[0] for s in self._samples if s[0] is not None]
        return {
            "gpu_utilization_mean": round(sum(busy) / len(busy), 1) if busy else None,
            "gpu_memory_used_max": max((s[1] for s in self._samples), default=None),
        }


def nvml_handle(device: torch.device) -> Any:
    """The NVML handle of the CUDA device ``device``, by its UUID: ``GPU-<uuid>`` for a whole
    GPU, ``MIG-<uuid>`` for a MIG device (CUDA reports the bare UUID of either)."""
    import pynvml

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    error: Exception | None = None
    for prefix in ("GPU-", "MIG-"):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(prefix + uuid)
        except pynvml.NVMLError as exc:
            error = exc
    assert error is not None
    raise error


class _NoGpu(GpuMonitor):
    def __init__(self) -> None:
        super().__init__(None)

    def reset(self) -> None:
        return None

    def summary(self) -> GpuSummary:
        return {"gpu_utilization_mean": None, "gpu_memory_used_max": None}
