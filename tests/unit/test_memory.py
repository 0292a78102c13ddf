"""Memory estimation and micro-batch planning, with real torch on CPU."""

from __future__ import annotations

import json
import math
import resource
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trial_runner.memory import (
    TERMINATION_MESSAGE_LIMIT,
    MemoryEstimate,
    MicroBatchPlan,
    NoMicroBatchFits,
    available_memory,
    effective_batch_size,
    estimate_for_study,
    estimate_training_peak,
    largest_configuration,
    measure_training_peak,
    plan_for_config,
    plan_micro_batch,
    run_estimate,
    termination_message,
)
from trial_runner.spec import HPOStudy, study_from_mapping
from trial_runner.task import Task, TaskData
from trial_runner.tasks.sequence import SequenceTransformer

CPU = torch.device("cpu")

# --------------------------------------------------------------------------- tasks


class SmallMLP(Task):
    def load_data(self) -> TaskData:
        gen = torch.Generator().manual_seed(0)
        return TaskData(torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,)))

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        hidden = int(params.get("hidden", 256))
        return nn.Sequential(
            nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )  # fmt: skip


class _DataDependent(nn.Module):
    """Branches on a value and keeps a data-dependent number of rows: no fake tensors."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        if float(out.abs().sum().item()) > 1e12:
            out = out[out.sum(dim=1) > 0]
        return out


class DataDependentMLP(SmallMLP):
    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return _DataDependent(int(params.get("hidden", 256)))


class HugeOnlyOnMeta(SmallMLP):
    """~3.6 GB of weights: must never be built for real by the estimator."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        if torch.get_default_device().type != "meta":
            raise RuntimeError("this test model may only be built on the meta device")
        width = int(self.config.get("width", 30_000))
        return nn.Sequential(nn.Linear(32, width), nn.Linear(width, width), nn.Linear(width, 10))


def _sample(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    data = task.load_data()
    assert isinstance(data.inputs, torch.Tensor) and data.targets is not None
    return data.inputs[:8], data.targets[:8]


def _estimate(
    task: Task,
    params: Mapping[str, Any],
    micro: int,
    precision: str = "FP32",
    accumulation: int = 1,
) -> MemoryEstimate:
    x, y = _sample(task)
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
    x, y = _sample(task)
    return measure_training_peak(
        task, params, micro, sample_input=x, sample_target=y, precision=precision
    )


SEQUENCE = SequenceTransformer({"n_samples": 32, "seq_len": 32, "channels": 4})

# --------------------------------------------------------------------------- plan_micro_batch


def test_plan_effective_100_micro_32_has_a_last_step_of_4() -> None:
    plan = plan_micro_batch(100, lambda m: m <= 32, max_micro_batch=None)
    assert plan == MicroBatchPlan(micro_batch=32, accumulation_steps=4, last_micro_batch=4)
    assert plan.sizes() == [32, 32, 32, 4]
    assert plan.effective_batch == 100
    assert plan.loss_weights() == pytest.approx([0.32, 0.32, 0.32, 0.04])
    assert sum(plan.loss_weights()) == pytest.approx(1.0)


def test_plan_takes_the_whole_batch_when_it_fits() -> None:
    calls: list[int] = []

    def fits(m: int) -> bool:
        calls.append(m)
        return True

    assert plan_micro_batch(256, fits, max_micro_batch=None) == MicroBatchPlan(256, 1, 256)
    assert calls == [256]


def test_plan_respects_max_micro_batch() -> None:
    assert plan_micro_batch(100, lambda m: True, max_micro_batch=40) == MicroBatchPlan(40, 3, 20)
    assert plan_micro_batch(30, lambda m: True, max_micro_batch=40) == MicroBatchPlan(30, 1, 30)


def test_plan_finds_the_exact_largest_size_not_only_a_power_of_two() -> None:
    plan = plan_micro_batch(100, lambda m: m <= 37, max_micro_batch=None)
    assert plan == MicroBatchPlan(37, 3, 26)


def test_plan_is_exact_for_every_threshold() -> None:
    def below(limit: int) -> Callable[[int], bool]:
        return lambda m: m <= limit

    for effective in range(1, 70):
        for limit in range(1, effective + 1):
            plan = plan_micro_batch(effective, below(limit), max_micro_batch=None)
            assert plan.micro_batch == limit, (effective, limit)
            assert plan.accumulation_steps == math.ceil(effective / limit)
            assert sum(plan.sizes()) == effective
            assert 1 <= plan.last_micro_batch <= plan.micro_batch


def test_plan_asks_few_questions() -> None:
    calls: list[int] = []

    def fits(m: int) -> bool:
        calls.append(m)
        return m <= 3

    plan = plan_micro_batch(4096, fits, max_micro_batch=None)
    assert plan.micro_batch == 3
    assert len(calls) <= 2 * math.log2(4096) + 3


def test_plan_raises_when_nothing_fits() -> None:
    with pytest.raises(NoMicroBatchFits):
        plan_micro_batch(64, lambda m: False, max_micro_batch=None)
    with pytest.raises(NoMicroBatchFits):
        plan_micro_batch(1, lambda m: False, max_micro_batch=None)
    with pytest.raises(ValueError):
        plan_micro_batch(0, lambda m: True, max_micro_batch=None)


# --------------------------------------------------------------------------- search space


def _study(**spec_changes: Any) -> HPOStudy:
    spec: dict[str, Any] = {
        "objective": {"metric": "accuracy"},
        "task": {
            "entrypoint": "trial_runner.tasks.sequence:SequenceTransformer",
            "config": {"n_samples": 32, "seq_len": 16, "channels": 4},
        },
        "searchSpace": [
            {
                "name": "learning_rate",
                "type": "Float",
                "low": "1e-4",
                "high": "1e-1",
                "scale": "Log",
                "group": "Critical",
            },
            {
                "name": "batch_size",
                "type": "Categorical",
                "choices": [16, 64, 32],
                "group": "Critical",
            },
            {
                "name": "d_model",
                "type": "Int",
                "low": 16,
                "high": 48,
                "step": 16,
                "group": "Model",
                "default": 32,
            },
            {
                "name": "norm",
                "type": "Categorical",
                "choices": ["layer", "batch"],
                "group": "Model",
            },
            {
                "name": "ff_mult",
                "type": "Categorical",
                "choices": ["2", "4", "1"],
                "group": "Model",
            },
        ],
        "budget": {"maxTrials": 10},
    }
    spec.update(spec_changes)
    return study_from_mapping(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "HPOStudy",
            "metadata": {"name": "memory-test"},
            "spec": spec,
        }
    )


def test_largest_configuration_takes_highs_and_largest_numeric_choices() -> None:
    config = largest_configuration(_study().spec)
    assert config == {
        "learning_rate": 0.1,
        "batch_size": 64,
        "d_model": 48,
        "norm": "layer",
        "ff_mult": "4",
    }
    assert isinstance(config["d_model"], int)


def test_largest_configuration_over_stages_still_covers_every_searched_group() -> None:
    stages = [{"groups": ["Critical"], "trials": 3}, {"groups": ["Critical", "Model"]}]
    numeric = [p for p in _study().spec.search_space if p.name in ("learning_rate", "d_model")]
    space = [p.model_dump(by_alias=True, exclude_none=True) for p in numeric]
    config = largest_configuration(_study(stages=stages, searchSpace=space).spec)
    assert config["d_model"] == 48  # searched in the second stage: its high, not its default


def test_effective_batch_size_sources() -> None:
    spec = _study().spec
    assert effective_batch_size(spec, {"batch_size": 64}) == 64
    assert effective_batch_size(spec, {}) == 32
    with_effective = _study(training={"effectiveBatchSize": 96}).spec
    assert effective_batch_size(with_effective, {}) == 96


# --------------------------------------------------------------------------- estimates


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


# --------------------------------------------------------------------------- planning a config


def test_plan_for_config_picks_the_largest_micro_batch_under_the_capacity() -> None:
    x, y = _sample(SEQUENCE)
    params = {"d_model": 32}
    at_16 = _estimate(SEQUENCE, params, 16, accumulation=8).peak_bytes
    at_64 = _estimate(SEQUENCE, params, 64, accumulation=2).peak_bytes
    whole = _estimate(SEQUENCE, params, 128).peak_bytes
    capacity = int((at_16 + at_64) / 2 * 1.1)
    assert whole * 1.1 > capacity  # activations dominate: the whole batch does not fit
    plan, estimate = plan_for_config(
        SEQUENCE,
        params,
        128,
        capacity_bytes=capacity,
        headroom=0.1,
        sample_input=x,
        sample_target=y,
        precision="FP32",
        device=CPU,
    )
    assert 16 <= plan.micro_batch < 64
    assert plan.accumulation_steps == math.ceil(128 / plan.micro_batch)
    assert estimate.peak_bytes * 1.1 <= capacity
    over = _estimate(SEQUENCE, params, plan.micro_batch + 1, accumulation=2).peak_bytes
    assert over * 1.1 > capacity


# --------------------------------------------------------------------------- kubetune estimate


def test_estimate_for_study_uses_the_largest_configuration() -> None:
    study = _study()
    result = estimate_for_study(study, CPU)
    assert result["config"] == largest_configuration(study.spec)
    assert result["method"] == "FakeTensor"
    assert result["effectiveBatch"] == 64
    assert result["microBatch"] == 64 and result["accumulationSteps"] == 1
    assert result["headroomBytes"] == int(result["peakBytes"] * 0.1)
    assert result["fitsDevice"] is True
    assert result["fullBatchPeakBytes"] == result["peakBytes"]  # the whole batch fits here
    assert result["dataBytes"] == 32 * 16 * 4 * 4 + 32 * 8
    x, y = _sample(SequenceTransformer(study.spec.task.config))
    direct = estimate_training_peak(
        SequenceTransformer(study.spec.task.config),
        result["config"],
        64,
        sample_input=x,
        sample_target=y,
        precision="FP32",
        device=CPU,
    )
    assert result["peakBytes"] == direct.peak_bytes


def test_run_estimate_writes_a_small_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "termination-log"
    assert run_estimate(_study(), as_json=True, termination_message_path=str(path)) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(path.read_text())
    assert len(path.read_bytes()) <= TERMINATION_MESSAGE_LIMIT
    for key in ("peakBytes", "method", "config"):
        assert written[key] == printed[key]
    assert run_estimate(_study(), as_json=False, termination_message_path=None) == 0
    table = capsys.readouterr().out
    assert "FakeTensor" in table and "d_model=48" in table


def test_run_estimate_reports_a_broken_task(tmp_path: Path) -> None:
    study = _study(task={"entrypoint": "trial_runner.tasks.nothing:Here"})
    path = tmp_path / "termination-log"
    assert run_estimate(study, as_json=True, termination_message_path=str(path)) == 1
    assert "error" in json.loads(path.read_text())


def test_termination_message_stays_under_the_kubernetes_limit() -> None:
    result = {
        "peakBytes": 1,
        "method": "FakeTensor",
        "config": {f"p{i}": "x" * 200 for i in range(64)},
        "detail": "y" * 2000,
    }
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = json.loads(text)
    assert decoded["peakBytes"] == 1 and decoded["method"] == "FakeTensor"
    assert "config" in decoded


def test_available_cpu_memory_is_positive_and_below_the_machine_total() -> None:
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    assert 0 < available_memory(CPU) <= total


def test_estimate_for_a_model_larger_than_this_machine_reports_instead_of_failing() -> None:
    # Weights, grads and AdamW's moments of the middle layer alone: 16 x width^2 bytes, made
    # twice what this machine has free.
    width = math.ceil(math.sqrt(2 * available_memory(CPU) / 16))
    study = _study(
        task={"entrypoint": f"{__name__}:HugeOnlyOnMeta", "config": {"width": width}},
        searchSpace=[{"name": "batch_size", "type": "Categorical", "choices": [8, 16]}],
    )
    result = estimate_for_study(study, CPU)
    assert result["method"] == "FakeTensor"
    assert result["fitsDevice"] is False
    assert result["microBatch"] == 1 and result["accumulationSteps"] == 16
    assert result["peakBytes"] >= 16 * width * width
    assert result["fullBatchPeakBytes"] >= result["peakBytes"]
