"""What memory a process's tensors hold, and a task that leaves some behind when it fails: for
the memory-baseline tests and the GPU check."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from trial_runner.tasks.digits import DigitsMLP

__all__ = ["FailsAfterForward", "live_tensor_bytes"]


def live_tensor_bytes() -> int:
    """Bytes of the storages of every live tensor that holds memory (not the planner's fake
    tensors, which hold none). ``gc.get_objects()`` also lists what only a reference cycle keeps
    alive, so without a collection first it counts that too."""
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or isinstance(obj, FakeTensor):
            continue
        if obj.device.type == "meta" or obj.layout != torch.strided:
            continue
        storage = obj.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class FailsAfterForward(DigitsMLP):
    """Every trial fails in its first step, after the forward pass allocated activations: the
    error's traceback (which Optuna keeps in a reference cycle) holds the model and them."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        inner = super().build_model(params)

        class Failing(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                self.inner(x)
                raise ValueError("this trial fails")

        return Failing()
