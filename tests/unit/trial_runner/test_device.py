"""The device a runner trains on: never the CPU of a GPU it was given but cannot use.

CUDA is made unusable for these tests (``torch.cuda.is_available()`` is False, as on a GPU pod
whose driver is missing or too old for the image's CUDA); the suite's machines have no GPU.
"""

from __future__ import annotations

import pytest
import torch

from kubetune_api.contract import DEVICE_KIND_ENV
from tests.harness.studies import spec_model
from tests.unit.trial_runner.test_engine import Blobs, make_spec
from trial_runner.device import DeviceUnavailable, pick_device
from trial_runner.engine import Engine


@pytest.fixture(autouse=True)
def _cuda_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _spec(accelerator: str):  # type: ignore[no-untyped-def]
    return spec_model(resources={"accelerator": accelerator})


@pytest.mark.parametrize("accelerator", ["GPU", "MIG"])
def test_a_gpu_asked_for_in_the_spec_that_cuda_cannot_use_is_a_clear_error(
    accelerator: str,
) -> None:
    with pytest.raises(DeviceUnavailable) as info:
        pick_device(_spec(accelerator))
    message = str(info.value)
    assert message.startswith("this runner was given a GPU that CUDA cannot use: ")
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda}" in message
    assert "NVIDIA driver" in message  # its version, or that none was found
    assert "\n" not in message


def test_a_gpu_given_by_the_operators_sizing_counts_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DEVICE_KIND_ENV, "MIG")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "MIG-3b9d2a3e-0000-5c7e-9d3b-8e2f6a1b4c5d")
    with pytest.raises(DeviceUnavailable, match="NVIDIA_VISIBLE_DEVICES=MIG-3b9d2a3e"):
        pick_device(_spec("Auto"))


def test_without_a_gpu_given_auto_and_cpu_train_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_KIND_ENV, raising=False)
    assert pick_device(_spec("Auto")) == torch.device("cpu")
    monkeypatch.setenv(DEVICE_KIND_ENV, "CPU")
    assert pick_device(_spec("Auto")) == torch.device("cpu")
    # accelerator: CPU is the user's word, whatever the pod was given.
    monkeypatch.setenv(DEVICE_KIND_ENV, "GPU")
    assert pick_device(_spec("CPU")) == torch.device("cpu")


def test_the_engine_does_not_train_a_gpu_study_on_the_cpu() -> None:
    spec = make_spec({"folds": 2, "epochs": 1}).model_copy(
        update={"resources": _spec("GPU").resources}
    )
    with pytest.raises(DeviceUnavailable):
        Engine(Blobs({}), spec)


def test_a_process_sharing_a_gpu_plans_for_and_is_held_to_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stand-ins for the CUDA queries: an 80 GiB device shared by four runner processes."""
    from kubetune_api.contract import CUDA_CONTEXT_BYTES
    from trial_runner.device import claim_share

    gib = 2**30
    fractions: list[tuple[float, object]] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (70 * gib, 80 * gib))
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: fractions.append((f, d))
    )
    gpu = torch.device("cuda", 0)
    assert claim_share(gpu, 4) == 20 * gib - CUDA_CONTEXT_BYTES
    assert fractions == [((20 * gib - CUDA_CONTEXT_BYTES) / (80 * gib), gpu)]
    # Alone on its device, or on the CPU: it plans for what is free and is not held.
    assert claim_share(gpu, 1) is None
    assert claim_share(torch.device("cpu"), 4) is None
    assert len(fractions) == 1


def test_the_runner_gives_the_engine_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from kubetune_api.contract import DEVICE_SHARE_ENV
    from trial_runner import runner

    seen: dict[str, object] = {}

    class Recorded:
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.update(kwargs)

    monkeypatch.setenv(DEVICE_SHARE_ENV, "3")
    monkeypatch.setattr(runner, "Engine", Recorded)
    monkeypatch.setattr(runner, "claim_share", lambda device, share: share * 1000)
    spec = make_spec({"folds": 2, "epochs": 1})
    runner._load_engine(spec, threading.Event())
    assert seen["memory_capacity_bytes"] == 3000
