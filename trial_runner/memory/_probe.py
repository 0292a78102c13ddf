"""The CUDA probe: the workload's steps run for real on the GPU, guarded by a first guess."""

from __future__ import annotations

import gc

from trial_runner import step
from trial_runner.memory._workload import (
    MemoryEstimate,
    StepWorkload,
    first_line,
    mib,
    repeat_rows,
)

__all__ = ["probe_cuda"]


def probe_cuda(workload: StepWorkload, guess: MemoryEstimate) -> MemoryEstimate:
    """``torch.cuda.max_memory_allocated`` over the real steps; ``guess`` when probing would
    only run out of memory, and more than the free memory when the probe did."""
    import torch

    device = workload.device
    free, _total = torch.cuda.mem_get_info(device)
    if guess.peak_bytes > free:
        return guess  # probing would only run out of memory
    out_of_memory: str | None = None
    peak = 0
    try:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        model = workload.task.build_model(workload.params).to(device)
        model.train(workload.training)
        optimizer = workload.build_optimizer(model)
        workload.prepare(model, optimizer)
        # The peak from here: what is allocated now (the model, a validation's optimizer
        # state) counts as resident; the step that made that state does not.
        torch.cuda.reset_peak_memory_stats(device)
        batches = workload.micro_batches(lambda sample, rows: repeat_rows(sample, rows).to(device))
        scaler = step.grad_scaler(workload.precision, device)
        kept = workload.run(model, optimizer, batches, scaler=scaler)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - baseline + kept
        del model, optimizer, batches
    except Exception as exc:  # an allocation failure by any name; anything else is raised
        if not step.is_out_of_memory(exc):
            raise
        out_of_memory = first_line(exc)
    # Free outside the except block: the traceback holds the step's tensors alive inside it.
    gc.collect()
    torch.cuda.empty_cache()
    if out_of_memory is not None:
        return MemoryEstimate(
            max(guess.peak_bytes, free + 1),
            "Probe",
            f"out of memory at {workload.kind} {workload.micro_batch} ({out_of_memory}); "
            f"first guess {guess.method} {mib(guess.peak_bytes)}",
        )
    return MemoryEstimate(
        int(peak),
        "Probe",
        f"torch.cuda.max_memory_allocated over the real steps at {workload.kind} "
        f"{workload.micro_batch}; first guess "
        f"{guess.method} {mib(guess.peak_bytes)}",
    )
