"""A warm runner's memory goes back to its baseline after every trial, and after an OOM retry.

A runner runs hundreds of trials in one process; a trial that leaves anything behind (its model,
its optimizer state, the activations an exception's traceback holds) makes the next one start
with less memory, until the process is OOMKilled. Measured two ways on CPU, after
``gc.collect()``:

* **Live tensors:** the bytes of every storage a live ``torch.Tensor`` holds (found through the
  garbage collector). Exact: the engine keeps its data and nothing else between trials.
* **The allocator:** bytes in use by glibc's malloc (``mallinfo2``: every arena, and the mmapped
  chunks), where torch's CPU allocator takes tensors from. Within :data:`MALLOC_TOLERANCE`, a
  quarter of one trial's model and optimizer state (:data:`MODEL_BYTES`), so one leaked trial
  fails the test: malloc's bookkeeping and Python's own small caches move by a few KiB a trial
  at first, and by less than 100 KiB over 30 trials.

On CUDA, ``torch.cuda.memory_allocated()`` must be back at its baseline exactly.

A failed or pruned trial's memory must also be back without ``gc.collect()`` (the runner does
not wait for the cyclic collector): measured with the collector off.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from kubetune_study.storage import ensure_study, open_storage
from tests.harness.memory import live_tensor_bytes
from tests.harness.studies import study_model
from tests.unit.trial_runner.test_engine import PARAMS, Blobs, make_spec
from trial_runner.engine import Engine
from trial_runner.runner import run_runner

HIDDEN = 512
#: Weights, gradients and Adam's two moments of the model below.
MODEL_BYTES = 4 * 4 * (2 * HIDDEN + HIDDEN * HIDDEN + HIDDEN * 3)
MALLOC_TOLERANCE = 2**20
TRIALS = 30


class WideBlobs(Blobs):
    """Blobs through two 512-wide hidden layers: about 4 MiB of weights, gradients and
    optimizer state."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return nn.Sequential(
            nn.Linear(2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, 3),
        )  # fmt: skip


class WideOomAbove(WideBlobs):
    """Runs out of memory, as CUDA does, after its activations were allocated, for
    micro-batches above ``limit``: the error's traceback holds them."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        limit = int(self.config["limit"])
        inner = super().build_model(params)

        class Guard(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = self.inner(x)
                held = torch.ones(x.shape[0], HIDDEN, HIDDEN // 16, device=x.device)  # 4 MiB
                if self.training and x.shape[0] > limit and held.sum() > 0:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return out

        return Guard()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _malloc_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _measure(device: torch.device) -> tuple[int, int]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device)), 0
    return live_tensor_bytes(), _malloc_in_use()


def _run(engine: Engine, params: Mapping[str, Any], number: int) -> dict[str, Any]:
    result = engine.run_trial(params, trial_number=number)
    return result.telemetry  # the result, and the model it holds, are dropped here


def _check_baseline(engine: Engine, trials: list[dict[str, Any]], device: torch.device) -> None:
    """After every trial: the live tensors are the engine's data, as before the first trial (no
    model, optimizer state or activation kept); malloc is where it was after a first trial
    (which makes one-off allocations: thread pools, kernels' workspaces)."""
    tensors, _ = _measure(device)
    _run(engine, trials[0], 0)
    _, malloc = _measure(device)
    for number, params in enumerate(trials, start=1):
        telemetry = _run(engine, params, number)
        now_tensors, now_malloc = _measure(device)
        assert now_tensors == tensors, (
            f"trial {number} ({telemetry['stop_reason']}, OOM retries "
            f"{telemetry['oom_retries']}) left {now_tensors - tensors} bytes of tensors alive"
        )
        if device.type == "cpu":
            assert now_malloc - malloc < MALLOC_TOLERANCE, (
                f"after trial {number}, malloc holds {now_malloc - malloc} bytes more "
                f"(a trial's model and optimizer state: {MODEL_BYTES})"
            )


DEVICES = [
    pytest.param(torch.device("cpu"), id="cpu"),
    pytest.param(
        torch.device("cuda"),
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_memory_returns_to_the_baseline_after_every_trial(device: torch.device) -> None:
    assert MODEL_BYTES > 4 * MALLOC_TOLERANCE  # one leaked trial is well above the tolerance
    spec = make_spec({"folds": 2, "epochs": 1, "precision": "FP32"})
    engine = Engine(WideBlobs({}), spec, device)
    batch_sizes = (16, 32, 64)
    trials = [
        {**PARAMS, "batch_size": batch_sizes[i % 3], "learning_rate": 0.01 + 0.001 * i}
        for i in range(TRIALS)
    ]
    _check_baseline(engine, trials, device)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_returns_to_the_baseline_after_an_out_of_memory_retry(device: torch.device) -> None:
    spec = make_spec({"folds": 2, "epochs": 1, "precision": "FP32"})
    engine = Engine(WideOomAbove({"limit": 16}), spec, device)
    # batch 64 runs out of memory twice per new effective batch before micro-batch 16 fits;
    # batch 16 fits at once. Each new effective batch retries; a seen one starts at what fitted.
    trials = [{**PARAMS, "batch_size": b} for b in (16, 64, 32, 64, 16, 32)]
    first_oom = engine.run_trial(trials[1], trial_number=99).telemetry
    assert first_oom["oom_retries"] == 2, first_oom
    engine = Engine(WideOomAbove({"limit": 16}), spec, device)
    _check_baseline(engine, trials, device)


def test_a_runner_keeps_no_tensor_of_a_finished_trial(tmp_path: Path) -> None:
    """The whole runner loop (claims, the objective, telemetry, the best checkpoint): after each
    trial the same tensors are alive as after the first (the engine's data)."""
    study = study_model(
        "memory",
        task={"entrypoint": "trial_runner.tasks.digits:DigitsMLP"},
        searchSpace=[
            {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"},
            {"name": "hidden_size", "type": "Int", "low": 16, "high": 256},
        ],
        stages=None,
        budget={"maxTrials": 12},
        # TPE, as before Auto became the default: GP (what Auto picks for this space) keeps its
        # fitted model's tensors in the sampler, which lives until the next claim.
        sampler={"type": "TPE"},
        training={"epochs": 1, "folds": 2, "checkpoint": {"directory": str(tmp_path / "best")}},
    )
    url = f"journal:{tmp_path}/studies.journal"
    ensure_study(open_storage(url), "memory", study.spec)
    after: list[int] = []

    def measure(trial: optuna.trial.FrozenTrial) -> None:
        gc.collect()
        after.append(live_tensor_bytes())

    threads = torch.get_num_threads()
    try:
        summary = run_runner(study, url, "memory", install_signal_handlers=False, on_trial=measure)
    finally:
        torch.set_num_threads(threads)
    assert summary.trials_run == 12 and len(after) == 12
    assert after == [after[0]] * 12, after


def test_a_failed_trials_tensors_are_freed_without_waiting_for_the_cyclic_collector(
    tmp_path: Path,
) -> None:
    """The cyclic collector runs when it decides to (here: never, as when a GPU runs out of
    memory before enough objects were allocated to trigger it); a failed trial's model and
    activations must not wait for it. Measured without ``gc.collect()``: ``gc.get_objects()``
    also lists what only a cycle keeps alive."""
    study = study_model(
        "failing",
        task={"entrypoint": "tests.harness.memory:FailsAfterForward"},
        searchSpace=[{"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"}],
        stages=None,
        budget={"maxTrials": 4, "maxConsecutiveFailedTrials": 4},
        training={"epochs": 1, "folds": 2},
    )
    url = f"journal:{tmp_path}/studies.journal"
    ensure_study(open_storage(url), "failing", study.spec)
    after: list[int] = []
    states: list[optuna.trial.TrialState] = []

    def measure(trial: optuna.trial.FrozenTrial) -> None:
        states.append(trial.state)
        after.append(live_tensor_bytes())

    threads = torch.get_num_threads()
    # pytest's log capture keeps every record, and a record logged with the error keeps its
    # traceback: Optuna's "Trial N failed" warning is left out here.
    optimize_logger = logging.getLogger("optuna.study._optimize")
    silence = logging.Filter("nothing")
    optimize_logger.addFilter(silence)
    gc.collect()
    gc.disable()
    try:
        run_runner(study, url, "failing", install_signal_handlers=False, on_trial=measure)
    finally:
        gc.enable()
        optimize_logger.removeFilter(silence)
        torch.set_num_threads(threads)
    assert states == [optuna.trial.TrialState.FAIL] * 4
    assert after == [after[0]] * 4, after
