"""What memory a process's tensors hold: for the memory-baseline tests and the GPU check."""

from __future__ import annotations

import gc

import torch
from torch._subclasses.fake_tensor import FakeTensor

__all__ = ["live_tensor_bytes"]


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
