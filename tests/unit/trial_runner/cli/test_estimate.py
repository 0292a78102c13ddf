"""``kubetune estimate``: what the operator's estimate pod prints and writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.unit.trial_runner.memory.tasks import sample, sequence_study
from trial_runner.cli.estimate import (
    TERMINATION_MESSAGE_LIMIT,
    estimate_for_study,
    run_estimate,
    termination_message,
)
from trial_runner.memory import available_memory, estimate_training_peak, largest_configuration
from trial_runner.tasks.sequence import SequenceTransformer

CPU = torch.device("cpu")


def test_estimate_for_study_uses_the_largest_configuration() -> None:
    study = sequence_study()
    result = estimate_for_study(study, CPU)
    assert result["config"] == largest_configuration(study.spec)
    assert result["method"] == "FakeTensor"
    assert result["effectiveBatch"] == 64
    assert result["microBatch"] == 64 and result["accumulationSteps"] == 1
    assert result["headroomBytes"] == int(result["peakBytes"] * 0.1)
    assert result["fitsDevice"] is True
    assert result["fullBatchPeakBytes"] == result["peakBytes"]  # the whole batch fits here
    assert result["dataBytes"] == 32 * 16 * 4 * 4 + 32 * 8
    x, y = sample(SequenceTransformer(study.spec.task.config))
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
    assert run_estimate(sequence_study(), as_json=True, termination_message_path=str(path)) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # progress lines went to stderr
    assert "kubetune estimate: [" in captured.err
    assert "estimating the largest configuration" in captured.err
    written = json.loads(path.read_text())
    assert len(path.read_bytes()) <= TERMINATION_MESSAGE_LIMIT
    for key in ("peakBytes", "method", "config"):
        assert written[key] == printed[key]
    assert run_estimate(sequence_study(), as_json=False, termination_message_path=None) == 0
    table = capsys.readouterr().out
    assert "FakeTensor" in table and "d_model=48" in table
    assert "GPU at BF16" in table and "one-sample micro-batches" in table


def test_run_estimate_reports_a_broken_task(tmp_path: Path) -> None:
    study = sequence_study(task={"entrypoint": "trial_runner.tasks.nothing:Here"})
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
    study = sequence_study(
        task={
            "entrypoint": "tests.unit.trial_runner.memory.tasks:HugeOnlyOnMeta",
            "config": {"width": width},
        },
        searchSpace=[{"name": "batch_size", "type": "Categorical", "choices": [8, 16]}],
    )
    result = estimate_for_study(study, CPU)
    assert result["method"] == "FakeTensor"
    assert result["fitsDevice"] is False
    assert result["microBatch"] == 1 and result["accumulationSteps"] == 16
    assert result["peakBytes"] >= 16 * width * width
    assert result["fullBatchPeakBytes"] >= result["peakBytes"]
    # What a GPU needs is estimated whatever this machine holds: the full batch too.
    peaks = {p["precision"]: p for p in result["gpuPeaks"]}
    assert set(peaks) == {"BF16", "FP32"}
    for peak in peaks.values():
        assert peak["fullBatchPeakBytes"] > available_memory(CPU)
        assert peak["microBatchPeakBytes"] >= 16 * width * width


def test_gpu_peaks_are_estimated_at_each_precision_a_gpu_may_train_at() -> None:
    study = sequence_study()
    result = estimate_for_study(study, CPU)
    peaks = {p["precision"]: p for p in result["gpuPeaks"]}
    # Auto: BF16 on GPUs with native bfloat16, FP32 on older ones. This CPU resolves Auto to
    # FP32, so that figure is the one it plans with.
    assert set(peaks) == {"BF16", "FP32"}
    assert peaks["FP32"]["fullBatchPeakBytes"] == result["fullBatchPeakBytes"]
    # Activations under BF16 autocast take half the bytes: the BF16 peak is not the FP32 one.
    assert peaks["BF16"]["fullBatchPeakBytes"] != peaks["FP32"]["fullBatchPeakBytes"]
    assert all(p["method"] == "FakeTensor" for p in peaks.values())
    stated = estimate_for_study(sequence_study(training={"precision": "FP32"}), CPU)
    assert [p["precision"] for p in stated["gpuPeaks"]] == ["FP32"]
    # A study that runs on CPU only has no GPU to size.
    cpu_only = estimate_for_study(sequence_study(resources={"accelerator": "CPU"}), CPU)
    assert cpu_only["gpuPeaks"] == []
