"""Peak memory of a configuration's training step or validation batch, estimated.

* ``FakeTensor`` (CPU, and the first guess on CUDA, :mod:`._fake`): the steps run without
  allocating memory under PyTorch's MemTracker.
* ``Analytic`` (:mod:`._analytic`): when the model cannot run under fake tensors; counted and
  fitted from real forwards on tiny batches.
* ``Probe`` (CUDA only, :mod:`._probe`): the steps run for real when the first guess fits.

Every one of them runs :func:`trial_runner.step.train_step` or
:func:`trial_runner.step.eval_forward`, as the engine does (see :mod:`._workload`).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trial_runner import step
from trial_runner.memory._analytic import estimate_analytic
from trial_runner.memory._fake import estimate_fake
from trial_runner.memory._probe import probe_cuda
from trial_runner.memory._workload import MemoryEstimate, StepWorkload, first_line
from trial_runner.memory.capacity import available_memory

if TYPE_CHECKING:
    import torch

    from trial_runner.task import Task

__all__ = ["estimate_peak", "estimate_training_peak"]


def estimate_peak(workload: StepWorkload) -> MemoryEstimate:
    """Peak memory of ``workload``: FakeTensor, else Analytic; on CUDA then a real Probe when
    the first guess fits the free memory."""
    try:
        guess = estimate_fake(workload)
    except Exception as exc:  # any failure to trace under fake tensors: measure instead
        guess = _analytic(workload, f"{type(exc).__name__}: {first_line(exc)}")
    if workload.device.type != "cuda":
        return guess
    return probe_cuda(workload, guess)


def _analytic(workload: StepWorkload, reason: str) -> MemoryEstimate:
    """The Analytic estimate, whose real steps on tiny batches may themselves run out of memory
    on a full device: then more than the device has free, so nothing plans on it."""
    import torch

    try:
        return estimate_analytic(workload, reason)
    except Exception as exc:
        if not step.is_out_of_memory(exc):
            raise
        error = first_line(exc)
    # Outside the except block: the traceback holds the steps' tensors alive inside it.
    gc.collect()
    if workload.device.type == "cuda":
        torch.cuda.empty_cache()
    return MemoryEstimate(
        available_memory(workload.device) + 1,
        "Analytic",
        f"fake tensors failed ({reason}); the real steps that measure activations ran out of "
        f"memory at {workload.kind} {workload.micro_batch} ({error})",
    )


def estimate_training_peak(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int = 1,
    fused: bool | None = None,
) -> MemoryEstimate:
    """Peak memory of training ``params`` at ``micro_batch`` samples per forward on ``device``.

    ``sample_input``/``sample_target`` are a few real samples (their shapes and dtypes define
    the batch; the Analytic fallback also runs a real forward on them). ``fused`` picks the
    optimizer implementation (default: fused on CUDA, foreach elsewhere), as the runner does.
    """
    return estimate_peak(
        StepWorkload(
            task,
            params,
            micro_batch,
            sample_input,
            sample_target,
            precision,
            device,
            accumulation_steps=accumulation_steps,
            fused=fused,
        )
    )
