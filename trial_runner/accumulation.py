"""Gradient-accumulation maths (pure).

An effective batch of ``B`` samples is trained as micro-batches of at most ``m`` samples.
Each micro-batch's mean loss is weighted by ``len(micro) / B``, so the accumulated gradient
equals the gradient of the mean loss over the whole batch, also when ``m`` does not divide
``B`` (the last micro-batch is smaller) and for the last, short batch of an epoch.
"""

from __future__ import annotations

import math

__all__ = ["accumulation_steps", "micro_slices"]


def accumulation_steps(effective_batch: int, micro_batch: int) -> int:
    if effective_batch < 1 or micro_batch < 1:
        raise ValueError("batch sizes must be positive")
    return math.ceil(effective_batch / micro_batch)


def micro_slices(batch: int, micro_batch: int) -> list[tuple[int, int, float]]:
    """``(start, stop, loss_weight)`` for each micro-batch of a batch of ``batch`` samples."""
    steps = accumulation_steps(batch, micro_batch)
    out: list[tuple[int, int, float]] = []
    for i in range(steps):
        start = i * micro_batch
        stop = min(start + micro_batch, batch)
        out.append((start, stop, (stop - start) / batch))
    return out
