"""A task whose memory runs out for real in one runner process of a pod, for the tests of
several runner processes sharing a device (``test_shared_device.py``).

The first process of a runner pod to create the file ``config.marker`` is short of memory:
its model asks torch for 2**47 bytes per training sample above ``config.fits`` samples, more
than the user address space of a 64-bit Linux process, which the CPU allocator refuses on
any machine ("DefaultCPUAllocator: can't allocate memory"), exactly as an allocation that
does not fit a device's memory fails. The memory estimate runs the same step on fake tensors,
which allocate nothing and are not refused: an estimate that misses a peak, as estimates can
when processes share a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from trial_runner.task import TaskData
from trial_runner.tasks.digits import DigitsMLP

#: Bytes asked for per training sample by the process that is short of memory.
UNMAPPABLE_BYTES_PER_SAMPLE = 2**47


class ShortOfMemoryMLP(DigitsMLP):
    """:class:`DigitsMLP` whose training runs out of memory in the process holding
    ``config.marker`` for micro-batches above ``config.fits`` samples (0: every one)."""

    short = False

    def load_data(self) -> TaskData:
        marker = self.config.get("marker")
        if marker:
            try:
                os.close(os.open(str(marker), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                self.short = True
            except FileExistsError:
                self.short = False
        return super().load_data()

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        fits = int(self.config.get("fits", 8))
        return _Hungry(super().build_model(params), fits if self.short else None)


class _Hungry(nn.Module):
    def __init__(self, inner: nn.Module, fits: int | None) -> None:
        super().__init__()
        self.inner = inner
        self.fits = fits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        real = not isinstance(x, FakeTensor)
        if self.fits is not None and self.training and real and rows > self.fits:
            torch.empty(rows * UNMAPPABLE_BYTES_PER_SAMPLE, dtype=torch.uint8)
        out: torch.Tensor = self.inner(x)
        return out
