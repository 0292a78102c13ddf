"""The device a runner trains on, and a clear error when it was given a GPU that CUDA cannot use.

A runner trains on a GPU when it was given one: ``spec.resources.accelerator: GPU`` or ``MIG``,
or the operator's sizing (``KUBETUNE_DEVICE_KIND`` in the runner pod). When CUDA cannot use it
(the image's torch needs a newer driver than the node has, the device plugin gave no device,
the container toolkit mounted no driver) the runner stops with :class:`DeviceUnavailable` (exit
code ``DEVICE_UNAVAILABLE_EXIT_CODE``), saying the driver's and torch's CUDA versions, instead
of training for hours on the CPU of a GPU pod. With ``accelerator: Auto`` and no GPU given
(a laptop, a CPU runner pod) it trains on the CPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kubetune_api.contract import CUDA_CONTEXT_BYTES, DEVICE_KIND_ENV, DEVICE_SHARE_ENV
from kubetune_api.spec import StudySpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "CUDA_DEVICES_ENV",
    "DeviceUnavailable",
    "claim_share",
    "cuda_report",
    "device_share",
    "given_a_gpu",
    "pick_device",
    "visible_gpus",
]

#: CUDA's list of the devices a process may use.
CUDA_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"

_GPU_KINDS = frozenset({"GPU", "MIG"})


class DeviceUnavailable(RuntimeError):
    """The runner was given a GPU that CUDA cannot use."""


def given_a_gpu(spec: StudySpec) -> bool:
    """Whether this runner was given a GPU: by the spec, or by the operator's sizing."""
    return (
        spec.resources.accelerator in _GPU_KINDS
        or os.environ.get(DEVICE_KIND_ENV, "") in _GPU_KINDS
    )


def pick_device(spec: StudySpec) -> torch.device:
    """CUDA when it is usable and the spec allows it; the CPU when no GPU was given; else
    :class:`DeviceUnavailable`."""
    import torch

    if spec.resources.accelerator != "CPU" and torch.cuda.is_available():
        return torch.device("cuda")
    if spec.resources.accelerator != "CPU" and given_a_gpu(spec):
        raise DeviceUnavailable(
            f"this runner was given a GPU that CUDA cannot use: {cuda_report()}"
        )
    return torch.device("cpu")


def cuda_report() -> str:
    """One line: torch's CUDA build, the NVIDIA driver and the CUDA version it supports (from
    NVML), and the devices the container was given."""
    import torch

    parts = [f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (CPU build)'}"]
    parts.append(_driver())
    for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if name in os.environ:
            parts.append(f"{name}={os.environ[name]}")
    return "; ".join(parts)


def _driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    except Exception as exc:  # no driver mounted, or NVML itself fails
        return f"no NVIDIA driver found ({exc})"
    return f"NVIDIA driver {driver}, which supports CUDA up to {cuda // 1000}.{cuda % 1000 // 10}"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that list when it
    is set, else one index per GPU NVML counts (no CUDA context, no torch import); none
    without a driver."""
    listed = os.environ.get(CUDA_DEVICES_ENV)
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no driver: no GPU
        return []
    return [str(index) for index in range(count)]


def device_share() -> int:
    """How many runner processes share this process's GPU (``KUBETUNE_DEVICE_SHARE``; 1)."""
    try:
        return max(1, int(os.environ.get(DEVICE_SHARE_ENV, "1")))
    except ValueError:
        return 1


def claim_share(device: torch.device, share: int) -> int | None:
    """With ``share`` processes on the GPU ``device``: this process's memory (the device's
    memory ÷ ``share``, less its CUDA context), enforced by the caching allocator
    (``set_per_process_memory_fraction``), so processes that plan at the same moment do not
    each plan for the whole device. ``None`` (plan for what is free) on CPU or alone."""
    import torch

    if device.type != "cuda" or share <= 1:
        return None
    _free, total = torch.cuda.mem_get_info(device)
    own = max(0, int(total) // share - CUDA_CONTEXT_BYTES)
    torch.cuda.set_per_process_memory_fraction(own / int(total), device)
    return own
