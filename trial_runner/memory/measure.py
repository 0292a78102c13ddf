"""Measured peak memory of the same steps, for real, on CPU (how estimates are checked).

The model, optimizer and batches are built for real and their bytes counted from their
storages; then the steps (:meth:`StepWorkload.run`, the engine's own step) run under
``torch.profiler`` with ``profile_memory=True``, whose allocation events come from the CPU
allocator itself: every allocation and free, including those no dispatch mode sees. The peak
is the live bytes before the steps plus the highest running sum of the allocation events.
``bench/memory_error.py`` reports the estimators' error against this measurement.
"""

from __future__ import annotations

import gc

from trial_runner.memory._workload import (
    StepWorkload,
    optimizer_tensors,
    repeat_rows,
    storage_bytes,
)

__all__ = ["measure_peak"]


def measure_peak(workload: StepWorkload) -> int:
    """Measured peak bytes of ``workload`` on CPU (its device is ignored)."""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    workload = workload.on(torch.device("cpu"))
    gc.collect()
    model = workload.task.build_model(workload.params)
    model.train(workload.training)
    optimizer = workload.build_optimizer(model)
    workload.prepare(model, optimizer)
    batches = workload.micro_batches(repeat_rows)
    before = storage_bytes(
        [
            *model.parameters(),
            *model.buffers(),
            *optimizer_tensors(optimizer),
            *[t for pair in batches for t in pair],
        ]
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kept = workload.run(model, optimizer, batches)
    events: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    events.sort()
    live = highest = 0
    for _, size in events:
        live += size
        highest = max(highest, live)
    return before + highest + kept
