"""Memory estimates against measured peaks, with real torch on CPU."""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
import torch

from tests.unit.trial_runner.memory.tasks import (
    SEQUENCE,
    DataDependentMLP,
    HugeOnlyOnMeta,
    SmallMLP,
    sample,
)
from trial_runner import step
from trial_runner.memory import (
    MemoryEstimate,
    StepWorkload,
    estimate_peak,
    estimate_training_peak,
    measure_peak,
)
from trial_runner.task import Task

CPU = torch.device("cpu")


def _estimate(
    task: Task,
    params: Mapping[str, Any],
    micro: int,
    precision: str = "FP32",
    accumulation: int = 1,
) -> MemoryEstimate:
    x, y = sample(task)
    return estimate_training_peak(
        task,
        params,
        micro,
        sample_input=x,
        sample_target=y,
        precision=precision,
        device=CPU,
        accumulation_steps=accumulation,
    )


def _measure(task: Task, params: Mapping[str, Any], micro: int, precision: str = "FP32") -> int:
    x, y = sample(task)
    return measure_peak(StepWorkload(task, params, micro, x, y, precision, CPU))


def _validation(task: Task, params: Mapping[str, Any], rows: int) -> StepWorkload:
    x, y = sample(task)
    return StepWorkload(task, params, rows, x, y, "FP32", CPU, training=False)


@pytest.mark.parametrize("micro", [8, 96])
def test_mlp_estimate_is_close_to_the_measured_peak(micro: int) -> None:
    task = SmallMLP({})
    estimate = _estimate(task, {"hidden": 256}, micro)
    measured = _measure(task, {"hidden": 256}, micro)
    assert estimate.method == "FakeTensor"
    assert 0.8 * measured <= estimate.peak_bytes <= 1.25 * measured, (estimate, measured)


@pytest.mark.parametrize("precision", ["FP32", "BF16"])
def test_transformer_estimate_is_close_to_the_measured_peak(precision: str) -> None:
    params = {"d_model": 64, "n_layers": 2}
    estimate = _estimate(SEQUENCE, params, 16, precision)
    measured = _measure(SEQUENCE, params, 16, precision)
    assert estimate.method == "FakeTensor"
    assert 0.8 * measured <= estimate.peak_bytes <= 1.25 * measured, (estimate, measured)


def test_estimate_grows_with_micro_batch_and_width() -> None:
    small = _estimate(SEQUENCE, {"d_model": 32}, 8).peak_bytes
    larger_batch = _estimate(SEQUENCE, {"d_model": 32}, 32).peak_bytes
    wider = _estimate(SEQUENCE, {"d_model": 128}, 8).peak_bytes
    assert larger_batch > 1.5 * small
    assert wider > 1.5 * small


def test_bf16_autocast_needs_less_activation_memory_than_fp32() -> None:
    params = {"d_model": 64}
    assert (
        _estimate(SEQUENCE, params, 64, "BF16").peak_bytes
        < _estimate(SEQUENCE, params, 64, "FP32").peak_bytes
    )


def test_accumulation_keeps_gradients_alive_during_the_next_forward() -> None:
    task = SmallMLP({})
    single = _estimate(task, {"hidden": 512}, 64, accumulation=1).peak_bytes
    accumulating = _estimate(task, {"hidden": 512}, 64, accumulation=4).peak_bytes
    assert accumulating > single


def test_optimizer_state_is_part_of_the_peak() -> None:
    # A wide, shallow MLP at a tiny batch: weights dominate. Weights + grads + AdamW's two
    # moments are at least 4x the weights; without the state the peak would be about 2x.
    task = SmallMLP({})
    params = {"hidden": 1024}
    weights = sum(p.numel() * 4 for p in task.build_model(params).parameters())
    assert _estimate(task, params, 2).peak_bytes >= 4 * weights


def test_model_that_fails_under_fake_tensors_falls_back_to_analytic() -> None:
    task = DataDependentMLP({})
    estimate = _estimate(task, {"hidden": 256}, 64)
    assert estimate.method == "Analytic"
    assert "fake tensors failed" in estimate.detail
    measured = _measure(task, {"hidden": 256}, 64)
    assert 0.7 * measured <= estimate.peak_bytes <= 2.5 * measured, (estimate, measured)
    assert _estimate(task, {"hidden": 256}, 512).peak_bytes > estimate.peak_bytes


def test_fake_estimate_allocates_no_real_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = _estimate(HugeOnlyOnMeta({}), {}, 4)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = 4 * (30_000 * 30_000 + 30_000 * 10)
    assert estimate.method == "FakeTensor"
    assert estimate.peak_bytes >= 4 * weights  # weights, grads, two AdamW moments
    assert after - before < 512 * 2**20


def test_changing_the_step_changes_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    task, params = SmallMLP({}), {"hidden": 128}
    before = _estimate(task, params, 8).peak_bytes
    extra = 64 * 2**20
    shared = step.train_step

    def heavier(loss: Any, model: Any, optimizer: Any, batches: Any, **kwargs: Any) -> None:
        """The shared step, changed to keep a 64 MiB tensor alive through each backward."""

        def loss_with_buffer(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            buffer = torch.zeros(extra // 4, device=kwargs["device"], requires_grad=True)
            return loss(outputs, targets) + (buffer * 0).sum()

        shared(loss_with_buffer, model, optimizer, batches, **kwargs)

    monkeypatch.setattr(step, "train_step", heavier)
    after = _estimate(task, params, 8).peak_bytes
    measured = _measure(task, params, 8)
    assert after - before >= extra  # the estimator ran the changed step
    assert 0.8 * measured <= after <= 1.25 * measured  # and so did the measurement


@pytest.mark.parametrize(
    ("task", "method", "steps"),
    [
        (SmallMLP({}), "FakeTensor", 2),
        # The fake attempt fails in its first step; then two real ones on tiny batches.
        (DataDependentMLP({}), "Analytic", 3),
    ],
)
def test_every_estimator_and_the_measurement_run_the_shared_step(
    task: Task, method: str, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    shared = step.train_step

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append("step")
        shared(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", counted)
    assert _estimate(task, {"hidden": 64}, 8).method == method
    assert len(calls) == steps
    calls.clear()
    _measure(task, {"hidden": 64}, 8)
    assert len(calls) == 2  # two optimizer steps: the state exists from the second


def test_validation_needs_no_gradients_but_counts_the_optimizer_state_it_runs_beside() -> None:
    """The engine validates between training epochs: AdamW's two moments are on the device
    then, gradients are not (``zero_grad(set_to_none=True)``)."""
    task = SmallMLP({})
    params = {"hidden": 1024}
    weights = sum(p.numel() * p.element_size() for p in task.build_model(params).parameters())
    training = _estimate(task, params, 64).peak_bytes
    validation = estimate_peak(_validation(task, params, 64))
    assert validation.method == "FakeTensor"
    assert 3 * weights <= validation.peak_bytes < training  # weights and two moments, no grads
    measured = measure_peak(_validation(task, params, 64))
    assert 0.8 * measured <= validation.peak_bytes <= 1.25 * measured, (validation, measured)


def test_validation_counts_the_outputs_kept_for_scoring() -> None:
    task = SmallMLP({})
    alone = estimate_peak(_validation(task, {}, 16)).peak_bytes
    kept = estimate_peak(replace(_validation(task, {}, 16), kept_rows=1000)).peak_bytes
    assert kept - alone == 1000 * 10 * 4  # ten float32 scores per kept row


CUBLAS_ALLOC_FAILED = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"


class _FullDevice(torch.nn.Module):
    """The data-dependent model (no fake tensors) on a device too full for cuBLAS's handle."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inner(x)
        raise RuntimeError(CUBLAS_ALLOC_FAILED)


class DataDependentOnAFullDevice(DataDependentMLP):
    def build_model(self, params: Mapping[str, Any]) -> torch.nn.Module:
        return _FullDevice(super().build_model(params))


def test_an_allocation_failure_in_the_analytic_steps_means_it_does_not_fit() -> None:
    """The Analytic estimate runs real steps on tiny batches; on a full device they may fail
    to allocate (as cuBLAS says it): the configuration does not fit, and planning goes on."""
    from trial_runner.memory import available_memory

    estimate = _estimate(DataDependentOnAFullDevice({}), {"hidden": 64}, 8)
    assert estimate.method == "Analytic"
    assert estimate.peak_bytes > available_memory(CPU)
    assert "CUBLAS_STATUS_ALLOC_FAILED" in estimate.detail


def test_an_error_that_is_not_an_allocation_failure_is_raised() -> None:
    class Broken(DataDependentMLP):
        def build_model(self, params: Mapping[str, Any]) -> torch.nn.Module:
            raise ValueError("the task's own bug")

    with pytest.raises(ValueError, match="own bug"):
        _estimate(Broken({}), {"hidden": 64}, 8)
