"""The one training step the engine trains and the estimators measure, on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trial_runner import step
from trial_runner.step import MicroBatchPlan

CPU = torch.device("cpu")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets)


def test_accumulation_weights_sum_to_one_with_a_partial_step() -> None:
    plan = MicroBatchPlan.for_sizes(100, 32)
    assert plan.accumulation_steps == 4
    assert plan.sizes() == [32, 32, 32, 4]
    assert abs(sum(plan.loss_weights()) - 1.0) < 1e-12
    assert plan.loss_weights()[-1] == 4 / 100
    assert MicroBatchPlan.for_sizes(8, 16).sizes() == [8]
    with pytest.raises(ValueError, match="must be positive"):
        MicroBatchPlan.for_sizes(0, 16)


def test_split_batch_matches_the_plan() -> None:
    inputs, targets = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    parts = step.split_batch(inputs, targets, 32)
    assert [len(x) for x, _ in parts] == MicroBatchPlan.for_sizes(100, 32).sizes()
    assert torch.equal(torch.cat([y for _, y in parts]), targets)


def test_accumulated_micro_batches_match_one_full_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(48, 2, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    torch.manual_seed(1)
    model_a = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
    model_b = copy.deepcopy(model_a)
    for model, micro in ((model_a, 48), (model_b, 20)):  # 20 does not divide 48
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        step.train_step(
            nn.functional.cross_entropy,
            model,
            optimizer,
            step.split_batch(inputs, targets, micro),
            precision="FP32",
            device=CPU,
            scaler=step.grad_scaler("FP32", CPU),
        )
        assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_train_step_calls_back_before_each_forward() -> None:
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[int] = []
    batches = step.split_batch(torch.randn(10, 4), torch.randn(10, 1), 4)
    step.train_step(
        _mse,
        model,
        optimizer,
        batches,
        precision="FP32",
        device=CPU,
        before_forward=lambda: calls.append(1),
    )
    assert len(calls) == len(batches) == 3


def test_auto_precision_is_fp32_on_cpu_and_bf16_runs_under_autocast() -> None:
    assert step.resolve_precision("Auto", CPU) == "FP32"
    assert step.resolve_precision("BF16", CPU) == "BF16"
    with pytest.raises(ValueError, match="unknown precision"):
        step.resolve_precision("FP8", CPU)
    model = nn.Linear(4, 2)
    with step.autocast("BF16", CPU):
        assert model(torch.randn(3, 4)).dtype == torch.bfloat16
    with step.autocast("FP32", CPU):
        assert model(torch.randn(3, 4)).dtype == torch.float32


def test_optimizer_is_fused_on_cuda_and_foreach_elsewhere() -> None:
    assert step.optimizer_flags(CPU) == (False, True)
    assert step.optimizer_flags(torch.device("cuda")) == (True, False)
    assert step.optimizer_flags(torch.device("cuda"), fused=False) == (False, True)


def test_loss_scaling_only_for_fp16_on_cuda() -> None:
    assert not step.grad_scaler("FP16", CPU).is_enabled()
    assert not step.grad_scaler("BF16", CPU).is_enabled()


def test_eval_forward_keeps_no_graph_and_returns_float32() -> None:
    model = nn.Linear(4, 2)
    outputs = step.eval_forward(model, torch.randn(5, 4), precision="BF16", device=CPU)
    assert outputs.dtype == torch.float32 and not outputs.requires_grad


def _gpu_with(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool) -> torch.device:
    """A stand-in CUDA device (no GPU here): bfloat16 native or only emulated, as
    ``torch.cuda.is_bf16_supported`` reports it for a T4 (emulated) or an A100 (native)."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    return torch.device("cuda", 0)


def test_auto_precision_takes_bf16_only_where_the_gpu_has_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert step.resolve_precision("Auto", _gpu_with(monkeypatch, native_bf16=True)) == "BF16"
    assert step.resolve_precision("Auto", _gpu_with(monkeypatch, native_bf16=False)) == "FP32"


def test_bf16_asked_on_a_gpu_without_native_bf16_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = _gpu_with(monkeypatch, native_bf16=False)
    with pytest.raises(ValueError, match=r"precision BF16: Tesla T4 has no native bfloat16"):
        step.resolve_precision("BF16", gpu)
    assert step.resolve_precision("FP16", gpu) == "FP16"
    assert step.resolve_precision("BF16", _gpu_with(monkeypatch, native_bf16=True)) == "BF16"


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError(
            "cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate`"
        ),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        ),
    ],
)
def test_every_allocation_failure_is_out_of_memory(error: BaseException) -> None:
    assert step.is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("CUDA error: an illegal memory access was encountered"), ValueError("bad")],
)
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not step.is_out_of_memory(error)
