"""GPU telemetry through NVML (nvidia-ml-py, imported as ``pynvml``).

Without NVML (no driver, no GPU) the runner is in CPU mode: that is logged once, not an error.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypedDict

import torch

__all__ = ["GpuMonitor", "GpuSummary"]

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
        self._samples: list[tuple[int, int]] = []
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
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls(pynvml.nvmlDeviceGetHandleByIndex(index))
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

        while not self._stop.wait(self._interval):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(self._handle)
                self._samples.append((int(util.gpu), int(mem.used)))
            except Exception:
                return

    def summary(self) -> GpuSummary:
        self._stop.set()
        if not self._samples:
            return {"gpu_utilization_mean": None, "gpu_memory_used_max": None}
        return {
            "gpu_utilization_mean": round(sum(s[0] for s in self._samples) / len(self._samples), 1),
            "gpu_memory_used_max": max(s[1] for s in self._samples),
        }


class _NoGpu(GpuMonitor):
    def __init__(self) -> None:
        super().__init__(None)

    def reset(self) -> None:
        return None

    def summary(self) -> GpuSummary:
        return {"gpu_utilization_mean": None, "gpu_memory_used_max": None}
