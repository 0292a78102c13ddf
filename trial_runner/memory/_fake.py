"""The FakeTensor estimate: the workload's steps, run without allocating any memory.

The model is built on the meta device and given fake storage on the target device under
:class:`~torch._subclasses.fake_tensor.FakeTensorMode`; the optimizer and the batches are made
there too, and the steps run under PyTorch's
:class:`~torch.distributed._tools.mem_tracker.MemTracker`, which follows every tensor storage
and records the peak of parameters + buffers + gradients + optimizer state + activations +
temporaries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from trial_runner.memory._workload import MemoryEstimate, StepWorkload, mib

__all__ = ["estimate_fake"]


def estimate_fake(workload: StepWorkload) -> MemoryEstimate:
    """The MemTracker peak of ``workload`` under fake tensors; raises when it cannot run so."""
    with _quiet("torch._subclasses.fake_tensor"):
        return _fake_peak(workload)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a logger: fake tensors log a traceback for every op they cannot run, and that
    is an expected way for the FakeTensor estimate to fail."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _fake_peak(workload: StepWorkload) -> MemoryEstimate:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    device = workload.device
    # Built on the meta device (no memory, no fake tensors yet: deep copies of fake
    # parameters, as nn.TransformerEncoder makes, would belong to another fake mode), then
    # given fake storage on the target device.
    with torch.device("meta"):
        meta_model = workload.task.build_model(workload.params)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # meta inputs of to_empty only
    with fake_mode:
        model = meta_model.to_empty(device=device)
        fake_mode.allow_non_fake_inputs = False  # a real tensor in the step is a bug: fall back
        model.train(workload.training)
        optimizer = workload.build_optimizer(model)
        workload.prepare(model, optimizer)
        batches = workload.micro_batches(
            lambda sample, rows: torch.empty(
                (rows, *sample.shape[1:]), dtype=sample.dtype, device=device
            )
        )
        tracker = MemTracker()
        external: list[Any] = [model, *([optimizer] if optimizer is not None else [])]
        tracker.track_external(*external, *[t for pair in batches for t in pair])
        with tracker:
            # MemTracker keeps per-module stats for one forward; the global peak survives.
            # No loss scaler: its step reads found-inf with .item(), which fake tensors cannot
            # answer; it holds two scalars.
            kept = workload.run(model, optimizer, batches, before_forward=tracker.reset_mod_stats)
        snapshot = tracker.get_tracker_snapshot("peak")
    # The training device's entry; "cuda" matches "cuda:0". Other devices (AdamW's step
    # counters stay on the CPU) are not the memory this estimate sizes.
    per_device: dict[Any, int] = {}
    for tracked, values in snapshot.items():
        if tracked.type == device.type and device.index in (None, tracked.index):
            per_device = dict(values)
            break
    peak = int(per_device.get("Total", 0)) + kept
    parts = ", ".join(
        f"{getattr(key, 'value', key)}={mib(int(value))}"
        for key, value in per_device.items()
        if key != "Total" and value
    )
    if kept:
        parts += f", outputs kept for scoring={mib(kept)}"
    return MemoryEstimate(peak, "FakeTensor", f"MemTracker peak under FakeTensorMode: {parts}")
