"""What training may use on this machine."""

from __future__ import annotations

import torch

from trial_runner.memory import available_memory


def test_available_cpu_memory_is_positive_and_below_the_machine_total() -> None:
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    assert 0 < available_memory(torch.device("cpu")) <= total
