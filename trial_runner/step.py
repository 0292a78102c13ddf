"""One training step: what the engine trains, and what every memory estimator measures.

The engine (:mod:`trial_runner.engine`) trains each effective batch with :func:`train_step`
and validates with :func:`eval_forward`. The estimators of :mod:`trial_runner.memory`
(FakeTensor, the CUDA probe, and the CPU measurement of the benchmark) run these same
functions, so an estimate measures exactly what a trial trains: a change here changes both.

A step over an effective batch:

* the batch is split into micro-batches (:class:`MicroBatchPlan`); each micro-batch's mean loss
  is weighted by its share of the batch (``size / effective``), so the summed gradients equal
  those of the mean loss over the whole batch, even when the last micro-batch is short;
* forward and loss run under :func:`autocast` (BF16/FP16 autocast, nothing for FP32); FP16 on
  CUDA scales the loss with a :class:`torch.amp.GradScaler`;
* ``backward`` runs per micro-batch (gradients accumulate), then one optimizer step and
  ``zero_grad(set_to_none=True)``, which frees the gradients until the next backward.

The optimizer is fused on CUDA and ``foreach`` elsewhere (:func:`optimizer_flags`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_api.spec import device_precision

if TYPE_CHECKING:
    import torch

__all__ = [
    "LossFunction",
    "MicroBatch",
    "MicroBatchPlan",
    "autocast",
    "eval_forward",
    "grad_scaler",
    "is_out_of_memory",
    "optimizer_flags",
    "resolve_precision",
    "split_batch",
    "train_step",
]

#: ``(outputs, targets) -> mean loss``, as :meth:`trial_runner.task.Task.loss`.
LossFunction = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
#: ``(inputs, targets)`` of one micro-batch.
MicroBatch = tuple["torch.Tensor", "torch.Tensor"]

_PRECISIONS = ("BF16", "FP16", "FP32")

#: What torch's errors say when an allocation failed: the CUDA caching allocator and the CUDA
#: runtime ("out of memory"), the CUDA libraries' handles and workspaces on a full device
#: (``CUBLAS_STATUS_ALLOC_FAILED``, ``CUSOLVER_STATUS_ALLOC_FAILED``, ``CUFFT_ALLOC_FAILED``,
#: ``CUDNN_STATUS_ALLOC_FAILED`` ...), and torch's CPU allocator.
_ALLOCATION_FAILED = (
    "out of memory",
    "_ALLOC_FAILED",
    "DefaultCPUAllocator: can't allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed, on the GPU or the CPU: what the engine retries
    at a smaller micro-batch and the estimators read as "does not fit"."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _ALLOCATION_FAILED)


@dataclass(frozen=True)
class MicroBatchPlan:
    """How an effective batch is split into micro-batches for gradient accumulation.

    ``accumulation_steps`` micro-batches make one optimizer step: all of ``micro_batch``
    samples but the last, which has ``last_micro_batch`` samples (equal to ``micro_batch``
    when it divides the effective batch).
    """

    micro_batch: int
    accumulation_steps: int
    last_micro_batch: int

    @classmethod
    def for_sizes(cls, effective_batch: int, micro_batch: int) -> MicroBatchPlan:
        """The split of ``effective_batch`` into micro-batches of at most ``micro_batch``."""
        if effective_batch < 1 or micro_batch < 1:
            raise ValueError(
                f"batch sizes must be positive (effective {effective_batch}, micro {micro_batch})"
            )
        micro = min(micro_batch, effective_batch)
        steps = math.ceil(effective_batch / micro)
        return cls(micro, steps, effective_batch - (steps - 1) * micro)

    @property
    def effective_batch(self) -> int:
        return (self.accumulation_steps - 1) * self.micro_batch + self.last_micro_batch

    def sizes(self) -> list[int]:
        """Sample counts of the micro-batches of one optimizer step."""
        return [self.micro_batch] * (self.accumulation_steps - 1) + [self.last_micro_batch]

    def loss_weights(self) -> list[float]:
        """Factor for each micro-batch's mean loss so the summed gradients equal those of the
        mean loss over the whole effective batch (``size / effective``)."""
        total = self.effective_batch
        return [size / total for size in self.sizes()]


def resolve_precision(requested: str, device: torch.device) -> str:
    """``Auto`` → BF16 on CUDA devices with native bfloat16 (compute capability 8.0 and up),
    else FP32; others as requested. ``BF16`` on a CUDA device without native bfloat16 is an
    error: torch would emulate it, slower than FP32."""
    import torch

    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if requested == "Auto":
        return device_precision(requested, native_bf16)
    if requested not in _PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (Auto, BF16, FP16 or FP32)")
    if requested == "BF16" and device.type == "cuda" and not native_bf16:
        raise ValueError(
            f"training.precision BF16: {torch.cuda.get_device_name(device)} has no native "
            "bfloat16 (compute capability 8.0 or newer); use FP16, FP32 or Auto"
        )
    return requested


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device`` (nothing for FP32)."""
    import torch

    resolved = resolve_precision(precision, device)
    if resolved == "FP32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "BF16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimizer_flags(device: torch.device, fused: bool | None = None) -> tuple[bool, bool]:
    """``(fused, foreach)`` for :meth:`~trial_runner.task.Task.build_optimizer`.

    ``fused=None`` means the default: fused kernels on CUDA, ``foreach`` elsewhere.
    """
    use_fused = device.type == "cuda" if fused is None else fused
    return use_fused, not use_fused


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for FP16 on CUDA (BF16 and FP32 need none)."""
    import torch

    enabled = resolve_precision(precision, device) == "FP16" and device.type == "cuda"
    return torch.amp.GradScaler(enabled=enabled)


def split_batch(inputs: torch.Tensor, targets: torch.Tensor, micro_batch: int) -> list[MicroBatch]:
    """Views of an effective batch as micro-batches of at most ``micro_batch`` samples."""
    import torch

    return list(
        zip(torch.split(inputs, micro_batch), torch.split(targets, micro_batch), strict=True)
    )


def train_step(
    loss_function: LossFunction,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[MicroBatch],
    *,
    precision: str,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    before_forward: Callable[[], None] | None = None,
) -> None:
    """One optimizer step over the effective batch made of ``micro_batches``.

    Each micro-batch's loss is weighted by ``size / effective``; gradients accumulate over the
    micro-batches; then one optimizer step (through ``scaler`` when given) and
    ``zero_grad(set_to_none=True)``. ``before_forward`` is called before each forward (the
    memory tracker of an estimate resets its per-module statistics there).
    """
    effective = sum(int(inputs.shape[0]) for inputs, _ in micro_batches)
    for inputs, targets in micro_batches:
        if before_forward is not None:
            before_forward()
        with autocast(precision, device):
            outputs = model(inputs)
            loss = loss_function(outputs, targets) * (int(inputs.shape[0]) / effective)
        # The graph keeps what backward needs; the outputs themselves need not outlive it.
        del outputs
        (scaler.scale(loss) if scaler is not None else loss).backward()  # type: ignore[no-untyped-call]
        del loss
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def eval_forward(
    model: torch.nn.Module, inputs: torch.Tensor, *, precision: str, device: torch.device
) -> torch.Tensor:
    """Validation outputs of one batch: no gradients, the training precision's autocast,
    returned as float32 so scores do not depend on the precision."""
    import torch

    with torch.no_grad(), autocast(precision, device):
        outputs: torch.Tensor = model(inputs)
        return outputs.float()
