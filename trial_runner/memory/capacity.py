"""How much memory training may use on a device: free GPU memory (with what this process's
allocator keeps cached), or the CPU's and cgroup's."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["available_memory"]

#: cgroup v2, then v1: (limit file, usage file).
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory(device: torch.device) -> int:
    """Bytes training may use on ``device``.

    On a GPU: the device's free memory plus what this process's caching allocator has reserved
    but not handed out. ``torch.cuda.mem_get_info`` counts that cache as used, and the cache is
    emptied only after an out-of-memory error, so without it each trial would plan against less
    than the one before. On CPU: the smaller of the kernel's ``MemAvailable`` and what the
    container's cgroup limit leaves.
    """
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    candidates: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
        except OSError:
            continue
        with contextlib.suppress(OSError, ValueError):
            if limit != "max" and int(limit) < 2**60:  # v1 says "no limit" with a huge number
                with open(usage_file) as f:
                    candidates.append(int(limit) - int(f.read().strip()))
        break
    if not candidates:
        page = os.sysconf("SC_PAGE_SIZE")
        candidates.append(int(os.sysconf("SC_AVPHYS_PAGES")) * page)
    return max(0, min(candidates))
