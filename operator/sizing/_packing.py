"""How many runner processes share one device: the packing decision (pure).

A runner pod gets one device: a whole GPU, a MIG slice, or (on CPU) its memory. When a trial
needs a fraction of a GPU's memory, the pod runs several runner processes on it, each
claiming trials like any runner. ``resources.trialsPerDevice: Auto`` packs as many as the
memory estimate lets fit, at most :data:`AUTO_MAX_TRIALS_PER_DEVICE`; a number asks for
exactly that many. After a pod's processes kept running out of memory the operator lowers a
limit, which both respect.

Every process on a GPU pays a CUDA context and library workspaces of its own
(:data:`CUDA_CONTEXT_BYTES`), which the memory estimate (tensors only) does not count, the
first process too: ``n`` processes fit when ``n × (need + context)`` does.
"""

from __future__ import annotations

from kubetune_api.contract import CUDA_CONTEXT_BYTES

__all__ = [
    "AUTO_MAX_TRIALS_PER_DEVICE",
    "CUDA_CONTEXT_BYTES",
    "lowered_trials_per_device",
    "packing_text",
    "trials_per_device",
]

#: The most runner processes ``Auto`` puts on one device: past a handful, processes wait on
#: each other's kernels more than they gain, and each needs host CPU of its own.
AUTO_MAX_TRIALS_PER_DEVICE = 8


def _fits(processes: int, need_bytes: int, device_bytes: int, shared_cost: int) -> bool:
    return processes * (need_bytes + shared_cost) <= device_bytes


def trials_per_device(
    device_bytes: int,
    need_bytes: int,
    wanted: int | None,
    limit: int | None = None,
    *,
    shared_cost: int = CUDA_CONTEXT_BYTES,
) -> int:
    """Runner processes one device of ``device_bytes`` runs, each needing ``need_bytes``.

    Args:
        device_bytes: Memory of the device (a GPU or MIG slice; a CPU runner's memory).
        need_bytes: What one process needs: peak plus headroom.
        wanted: ``resources.trialsPerDevice`` as a number, or ``None`` for ``Auto``.
        limit: The most per device after out-of-memory exits, if any.
        shared_cost: Memory each process takes besides its tensors (a CUDA context; 0 on CPU).

    Returns:
        The number of processes, or 0 when the device cannot hold what is asked: not even
        one process, or fewer than the ``wanted`` number (capped by ``limit``).
    """
    if wanted is not None:
        count = min(wanted, limit or wanted)
        return count if _fits(count, need_bytes, device_bytes, shared_cost) else 0
    if need_bytes + shared_cost > device_bytes:
        return 0
    count = min(
        device_bytes // (need_bytes + shared_cost),
        AUTO_MAX_TRIALS_PER_DEVICE,
        limit or AUTO_MAX_TRIALS_PER_DEVICE,
    )
    return max(1, count)


def lowered_trials_per_device(processes: int) -> int:
    """Trials per device for replacements of a pod whose ``processes`` kept running out of
    memory: one fewer, at least one."""
    return max(1, processes - 1)


def packing_text(peak_bytes: int, processes: int, device_bytes: int) -> str:
    """Estimated peak memory of ``processes`` trials as a share of the device's memory, as
    the status writes it (``"84%"``: no floats in the API)."""
    return f"{round(100 * peak_bytes * processes / device_bytes)}%"
