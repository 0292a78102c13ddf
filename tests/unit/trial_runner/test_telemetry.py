"""GPU telemetry through NVML, and CPU mode when there is none."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pynvml
import pytest
import torch

from tests.harness.helpers import wait_until
from trial_runner import telemetry
from trial_runner.telemetry import GpuMonitor

EMPTY = {"gpu_utilization_mean": None, "gpu_memory_used_max": None}


def test_cpu_device_records_no_gpu_telemetry() -> None:
    monitor = GpuMonitor.create(torch.device("cpu"))
    monitor.reset()
    assert monitor.summary() == EMPTY


def test_missing_nvml_is_cpu_mode_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    monkeypatch.setattr(telemetry, "_warned", False)
    with caplog.at_level(logging.INFO, logger="kubetune.telemetry"):
        first = GpuMonitor.create(torch.device("cuda", 0))
        second = GpuMonitor.create(torch.device("cuda", 0))
    assert first.summary() == EMPTY and second.summary() == EMPTY
    assert len([r for r in caplog.records if "NVML unavailable" in r.message]) == 1


def test_samples_are_summarised_per_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    device = {"gpu": 60, "used": 123}
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetUtilizationRates", lambda _h: SimpleNamespace(gpu=device["gpu"])
    )
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda _h: SimpleNamespace(used=device["used"])
    )
    monitor = GpuMonitor(handle=object(), interval=0.01)
    monitor.reset()
    wait_until(lambda: len(monitor._samples) >= 3, 10, "three NVML samples")
    assert monitor.summary() == {"gpu_utilization_mean": 60.0, "gpu_memory_used_max": 123}
    # The next trial's summary holds none of this trial's samples.
    device.update(gpu=20, used=7)
    monitor.reset()
    wait_until(lambda: len(monitor._samples) >= 1, 10, "a sample of the next trial")
    assert monitor.summary() == {"gpu_utilization_mean": 20.0, "gpu_memory_used_max": 7}


class _Host:
    """A stand-in NVML of a host whose GPU 0 is split into MIG devices; this container's CUDA
    device 0 is one of them (no GPU here)."""

    MIG = "3b9d2a3e-0000-5c7e-9d3b-8e2f6a1b4c5d"

    def __init__(self) -> None:
        self.handles = {
            "GPU-0a0a0a0a-1111-2222-3333-444444444444": "parent",
            f"MIG-{self.MIG}": "mig",
        }

    def by_uuid(self, uuid: str) -> str:
        if uuid not in self.handles:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return self.handles[uuid]

    @staticmethod
    def utilisation(handle: str) -> SimpleNamespace:
        if handle == "mig":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=90)

    @staticmethod
    def memory(handle: str) -> SimpleNamespace:
        return SimpleNamespace(used={"mig": 5 * 2**30, "parent": 70 * 2**30}[handle])


def test_a_mig_device_is_found_by_its_uuid_and_sampled_without_utilisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = _Host()
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: "parent")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", host.by_uuid)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", host.utilisation)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", host.memory)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=host.MIG)
    )
    monitor = GpuMonitor.create(torch.device("cuda", 0))
    assert monitor._handle == "mig"
    monitor._interval = 0.01
    monitor.reset()
    wait_until(lambda: len(monitor._samples) >= 3, 10, "three NVML samples")
    assert monitor.summary() == {"gpu_utilization_mean": None, "gpu_memory_used_max": 5 * 2**30}
