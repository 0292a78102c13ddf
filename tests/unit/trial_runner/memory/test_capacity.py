"""What training may use on this machine."""

from __future__ import annotations

import pytest
import torch

from trial_runner.memory import available_memory


def test_available_cpu_memory_is_positive_and_below_the_machine_total() -> None:
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    assert 0 < available_memory(torch.device("cpu")) <= total


def test_gpu_capacity_counts_the_allocators_own_cache_as_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caching allocator keeps freed blocks reserved; ``mem_get_info`` counts them as used,
    but this process may use them again (stand-ins for the CUDA queries: no GPU here)."""
    gib = 2**30
    device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 12 * gib)
    assert available_memory(device) == 28 * gib
