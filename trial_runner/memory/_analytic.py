"""The Analytic estimate, for models that cannot run under fake tensors.

Such models call ``.item()``, branch on values or have data-dependent shapes. The model and
the optimizer are built for real; parameter, buffer, gradient and optimizer-state bytes are
counted exactly, and activations are measured from real training steps
(:func:`trial_runner.step.train_step`, which also materialises the optimizer state) on two
tiny batches: the bytes saved for backward plus the output, fitted as a fixed part plus a
per-sample part and scaled to the micro-batch. For a training step they are multiplied by
:data:`ACTIVATION_FACTOR`: during backward the saved activations and the gradients flowing
through them coexist. A validation batch keeps none of them for backward, so the bytes a
training forward saves bound it from above."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trial_runner import step
from trial_runner.memory._workload import (
    MemoryEstimate,
    StepWorkload,
    mib,
    optimizer_tensors,
    repeat_rows,
    storage_bytes,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ACTIVATION_FACTOR", "TINY_BATCHES", "estimate_analytic"]

#: Batch sizes of the two real forwards activations are fitted on (linear in the batch: a
#: fixed part, e.g. autocast's low-precision weight copies, plus a per-sample part).
TINY_BATCHES = (2, 8)

#: Activations of a training step are multiplied by this (see the module docstring).
ACTIVATION_FACTOR = 1.5


def estimate_analytic(workload: StepWorkload, reason: str) -> MemoryEstimate:
    """Counted and fitted peak of ``workload``; ``reason`` says why fake tensors failed."""
    import torch

    device, micro_batch = workload.device, workload.micro_batch
    model = workload.task.build_model(workload.params).to(device)
    model.train()
    optimizer = workload.build_optimizer(model)
    # A validation batch's forwards are measured as training ones (the bytes they save for
    # backward bound a forward without gradients from above); the steps also materialise the
    # optimizer's state, which is on the device while the engine validates.
    stepping = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
    fixed, per_sample, output_bytes_per_row = _fit_activations(workload, model, stepping)
    small, large = TINY_BATCHES

    param_bytes = storage_bytes(model.parameters())
    buffer_bytes = storage_bytes(model.buffers())
    trainable = [p for p in model.parameters() if p.requires_grad] if workload.training else []
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    state_bytes = storage_bytes(optimizer_tensors(optimizer))
    factor = ACTIVATION_FACTOR if workload.training else 1.0
    activation_bytes = int((fixed + per_sample * micro_batch) * factor)
    batch_bytes = micro_batch * workload.row_bytes()
    batch_bytes *= 2 if workload.training and workload.accumulation_steps > 1 else 1
    kept_bytes = int(output_bytes_per_row * workload.kept_rows)
    # A foreach optimizer step allocates temporaries about the size of the parameters; a
    # fused one does not. The step's peak and the backward's peak do not overlap.
    fused, _ = step.optimizer_flags(device, workload.fused)
    step_bytes = 0 if fused else grad_bytes
    resident = param_bytes + buffer_bytes + state_bytes + grad_bytes + batch_bytes + kept_bytes
    peak = resident + max(activation_bytes, step_bytes)
    detail = (
        f"fake tensors failed ({reason}); params={mib(param_bytes)}, "
        f"buffers={mib(buffer_bytes)}, grads={mib(grad_bytes)}, "
        f"optimizer={mib(state_bytes)} (+{mib(step_bytes)} during the step), "
        f"activations={mib(activation_bytes)} "
        f"({factor:g} x the bytes saved by real forwards of {small} and "
        f"{large} samples, {mib(int(fixed))} + {int(per_sample)} B/sample, at "
        f"{micro_batch}), batch={mib(batch_bytes)}"
    )
    if kept_bytes:
        detail += f", outputs kept for scoring={mib(kept_bytes)}"
    return MemoryEstimate(peak, "Analytic", detail)


def _fit_activations(
    workload: StepWorkload, model: nn.Module, stepping: torch.optim.Optimizer
) -> tuple[float, float, float]:
    """Activation bytes as a fixed part plus a per-sample part, fitted on real steps of
    :data:`TINY_BATCHES` samples, and the output's bytes per sample."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    small, large = TINY_BATCHES
    small_bytes, _ = _saved_bytes(workload, model, stepping, small, param_storages)
    large_bytes, output_bytes_per_row = _saved_bytes(
        workload, model, stepping, large, param_storages
    )
    per_sample = max(0.0, (large_bytes - small_bytes) / (large - small))
    fixed = max(0.0, small_bytes - per_sample * small)
    return fixed, per_sample, output_bytes_per_row


def _saved_bytes(
    workload: StepWorkload,
    model: nn.Module,
    stepping: torch.optim.Optimizer,
    rows: int,
    param_storages: set[int],
) -> tuple[int, float]:
    """Bytes a real step of ``rows`` samples keeps for backward, plus its output; and the
    output's bytes per sample."""
    import torch

    device = workload.device
    inputs = repeat_rows(workload.sample_input, rows).to(device)
    targets = repeat_rows(workload.sample_target, rows).to(device)
    excluded = param_storages | {inputs.untyped_storage().data_ptr()}
    saved: dict[int, int] = {}
    output_bytes_per_row = 0.0

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal output_bytes_per_row
        storage = outputs.untyped_storage()
        saved.setdefault(storage.data_ptr(), storage.nbytes())
        output_bytes_per_row = outputs.float().untyped_storage().nbytes() / rows
        return workload.task.loss(outputs, targets)

    # The step also materialises the optimizer state, so it can be counted exactly.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step.train_step(
            loss,
            model,
            stepping,
            [(inputs, targets)],
            precision=workload.precision,
            device=device,
        )
    return sum(saved.values()), output_bytes_per_row
