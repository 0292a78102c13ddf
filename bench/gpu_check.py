"""The GPU check: kubetune's CUDA paths on a real device, in minutes.

    python bench/gpu_check.py --json gpu-check.json          # on a GPU machine (about 5 min)
    python bench/gpu_check.py --device cpu --quick           # the same checks on CPU (the suite)

Each check runs kubetune's own code (the estimator, the engine, the runner, the supervisor, the
telemetry) and prints one row: pass, fail, or n/a where it needs a GPU and runs on CPU. The
figures go to ``--json``. Exit code 1 when a check fails.

1. ``estimate``: FakeTensor estimate against the measured peak of the same training steps, for
   the built-in tasks at FP32 and BF16 (goal: within 15%). Measured with
   ``torch.cuda.max_memory_allocated`` on a GPU, from the allocator's records on CPU.
2. ``oom-training`` / ``oom-validation``: a trial whose training step (then its validation
   batch) does not fit is retried at half the batch and completes. On a GPU the memory is
   really allocated until CUDA refuses; on CPU the task refuses past a budget with torch's own
   ``OutOfMemoryError`` (the host would swap, not refuse).
3. ``shared-device``: ``kubetune run --workers 2`` on one device: each process plans for its
   share, no trial runs out of memory, every trial completes.
4. ``baseline``: the device's allocated memory is back where it was after failed trials,
   without ``gc.collect()``.
5. ``nvml``: NVML memory readings of the runner's own device (GPU only).
6. ``numerics``: ``Auto`` precision, TF32 and fused AdamW on, and the transformer's step faster
   at BF16 than at FP32 (GPU only).
7. ``driver``: CUDA usable, with the driver's and torch's CUDA versions.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve()
sys.path.append(str(BENCH.parent.parent))  # after the standard library (operator/)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.harness.memory import live_tensor_bytes  # noqa: E402
from tests.harness.studies import small_runner_study, study_model  # noqa: E402
from trial_runner.device import cuda_report  # noqa: E402
from trial_runner.engine import Engine  # noqa: E402
from trial_runner.memory import StepWorkload, measure_peak, sample_batch  # noqa: E402
from trial_runner.memory._fake import estimate_fake  # noqa: E402
from trial_runner.memory._workload import repeat_rows  # noqa: E402
from trial_runner.task import load_task_class  # noqa: E402
from trial_runner.tasks.digits import DigitsMLP  # noqa: E402

DIGITS = "trial_runner.tasks.digits:DigitsMLP"
SEQUENCE = "trial_runner.tasks.sequence:SequenceTransformer"
SEQ_CONFIG = {"n_samples": 512, "seq_len": 64, "channels": 4}
#: (task, its config, parameters, micro-batch)
ESTIMATE_CASES = [
    (DIGITS, {}, {"hidden_size": 512, "n_layers": 3}, 256),
    (SEQUENCE, SEQ_CONFIG, {"d_model": 128, "n_layers": 4}, 64),
]
ESTIMATE_GOAL = 0.15

Row = dict[str, Any]


def _row(check: str, passed: bool | None, detail: str, **figures: Any) -> Row:
    status = "n/a" if passed is None else "pass" if passed else "fail"
    return {"check": check, "status": status, "detail": detail, **figures}


def _measured_peak(workload: StepWorkload) -> int:
    """The real peak of the workload's steps: CUDA's allocator, or the CPU allocator's records."""
    if workload.device.type != "cuda":
        return measure_peak(workload)
    device = workload.device
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    model = workload.task.build_model(workload.params).to(device)
    model.train()
    optimizer = workload.build_optimizer(model)
    batches = workload.micro_batches(lambda sample, rows: repeat_rows(sample, rows).to(device))
    torch.cuda.reset_peak_memory_stats(device)
    workload.run(model, optimizer, batches)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    del model, optimizer, batches
    gc.collect()
    torch.cuda.empty_cache()
    return int(peak)


def check_estimate(device: torch.device, quick: bool) -> list[Row]:
    rows = []
    cases = ESTIMATE_CASES[:1] if quick else ESTIMATE_CASES
    for entrypoint, config, params, micro in cases:
        task = load_task_class(entrypoint)(config)
        x, y = sample_batch(task.load_data())
        for precision in ("FP32", "BF16"):
            workload = StepWorkload(task, params, micro, x, y, precision, device)
            estimate = estimate_fake(workload).peak_bytes
            measured = _measured_peak(workload)
            error = estimate / measured - 1
            name = entrypoint.rsplit(":", 1)[-1]
            rows.append(
                _row(
                    "estimate",
                    abs(error) <= ESTIMATE_GOAL,
                    f"{name} {precision} micro-batch {micro}: estimate {estimate / 2**20:.1f} MiB, "
                    f"measured {measured / 2**20:.1f} MiB ({error:+.1%})",
                    estimate_bytes=estimate,
                    measured_bytes=measured,
                    error=error,
                )
            )
    return rows


class Hog(DigitsMLP):
    """The digits MLP with a forward that needs ``row_bytes`` per row on the device, in training
    (``where: training``) or validation. On a GPU they are really allocated; on CPU a budget
    stands in for the device (the task raises torch's OutOfMemoryError past it)."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        inner = super().build_model(params)
        row_bytes, budget = int(self.config["row_bytes"]), int(self.config["budget"])
        in_training = self.config["where"] == "training"

        class Hungry(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if self.training == in_training:
                    need = row_bytes * int(x.shape[0])
                    if x.device.type == "cuda":
                        held = torch.empty(need, dtype=torch.uint8, device=x.device)
                        del held
                    elif need > budget:
                        raise torch.OutOfMemoryError(f"CPU budget of {budget} B: {need} B asked")
                return self.inner(x)  # type: ignore[no-any-return]

        return Hungry()


def _free(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return 2**30


def check_oom(device: torch.device) -> list[Row]:
    rows = []
    free = _free(device)
    batch = 64
    # A batch of 64 needs 1.6x what is free, 32 needs 0.8x: one retry, then it fits.
    row_bytes = int(free * 1.6) // batch
    for where in ("training", "validation"):
        spec = small_runner_study("oom", DIGITS, 1, {"folds": 2, "epochs": 1}).spec
        task = Hog({"row_bytes": row_bytes, "budget": free, "where": where})
        engine = Engine(task, spec, device)
        params = {"learning_rate": 0.01, "batch_size": batch, "hidden_size": 64}
        if where == "training":
            result = engine.run_trial(params, trial_number=0, micro_batch=batch)
            t = result.telemetry
            ok = not result.pruned and t["oom_retries"] >= 1 and t["micro_batch"] < batch
            detail = f"micro-batch {batch} -> {t['micro_batch']} after {t['oom_retries']} retries"
        else:
            engine._trainer.validation_cap = None
            result = engine.run_trial(params, trial_number=0, micro_batch=8)
            t = result.telemetry
            ok = not result.pruned and t["validation_batch"] * row_bytes <= free
            detail = f"validation batch ran at {t['validation_batch']} rows"
        rows.append(_row(f"oom-{where}", ok, detail, telemetry=dict(t)))
        del engine
        gc.collect()
    return rows


def check_shared_device(device: torch.device, workdir: Path) -> list[Row]:
    """Two runner processes of ``kubetune run`` on one device."""
    study = small_runner_study("shared", DIGITS, 4, {"folds": 2, "epochs": 1})
    document = study.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["spec"]["resources"] = {"accelerator": "GPU" if device.type == "cuda" else "CPU"}
    path = workdir / "shared.yaml"
    from kubetune_api.spec import dump_yaml

    path.write_text(dump_yaml(document))
    url = f"journal:{workdir}/shared.journal"
    env_devices = {"CUDA_VISIBLE_DEVICES": "0"} if device.type == "cuda" else {}
    run = subprocess.run(
        [sys.executable, "-m", "trial_runner.cli", "run", str(path), "--storage", url,
         "--workers", "2", "--no-progress", "--log-dir", str(workdir / "logs")],
        capture_output=True, text=True, env={**_environ(), **env_devices}, timeout=600,
    )  # fmt: skip
    import optuna

    trials = optuna.load_study(study_name="shared", storage=_storage(url)).trials
    telemetry = [t.user_attrs.get("kubetune.telemetry") or {} for t in trials]
    retries = sum(int(t.get("oom_retries", 0)) for t in telemetry)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    ok = run.returncode == 0 and complete == 4 and retries == 0
    return [
        _row(
            "shared-device",
            ok,
            f"2 processes on {device.type}: {complete}/4 trials complete, {retries} OOM retries"
            + ("" if run.returncode == 0 else f"; exit {run.returncode}: {run.stderr[-300:]}"),
        )
    ]


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _storage(url: str) -> Any:
    from kubetune_study.storage import open_storage

    return open_storage(url)


def _allocated(device: torch.device) -> Callable[[], int]:
    if device.type == "cuda":
        return lambda: int(torch.cuda.memory_allocated(device))
    return live_tensor_bytes


def check_baseline(device: torch.device, workdir: Path) -> list[Row]:
    import logging

    from kubetune_study.storage import ensure_study, open_storage
    from trial_runner.runner import run_runner

    study = study_model(
        "baseline",
        task={"entrypoint": "tests.harness.memory:FailsAfterForward"},
        searchSpace=[{"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"}],
        stages=None,
        budget={"maxTrials": 4, "maxConsecutiveFailedTrials": 4},
        training={"epochs": 1, "folds": 2},
        resources={"accelerator": "GPU" if device.type == "cuda" else "CPU"},
    )
    url = f"journal:{workdir}/baseline.journal"
    ensure_study(open_storage(url), "baseline", study.spec)
    allocated = _allocated(device)
    after: list[int] = []
    quiet = logging.Filter("nothing")
    logging.getLogger("optuna.study._optimize").addFilter(quiet)
    gc.collect()
    gc.disable()
    try:
        run_runner(
            study, url, "baseline", install_signal_handlers=False,
            on_trial=lambda trial: after.append(allocated()),
        )  # fmt: skip
    finally:
        gc.enable()
        logging.getLogger("optuna.study._optimize").removeFilter(quiet)
    ok = len(after) == 4 and after == [after[0]] * 4
    return [_row("baseline", ok, f"allocated after each failed trial: {after} B", allocated=after)]


def check_nvml(device: torch.device) -> list[Row]:
    if device.type != "cuda":
        return [_row("nvml", None, "no GPU")]
    from trial_runner.telemetry import GpuMonitor

    monitor = GpuMonitor.create(device)
    monitor._interval = 0.05
    monitor.reset()
    held = torch.empty(2**28, dtype=torch.uint8, device=device)
    time.sleep(0.5)
    summary = monitor.summary()
    del held
    ok = summary["gpu_memory_used_max"] is not None
    return [_row("nvml", ok, f"summary {summary}", summary=dict(summary))]


def check_numerics(device: torch.device) -> list[Row]:
    from trial_runner import step

    resolved = step.resolve_precision("Auto", device)
    if device.type != "cuda":
        return [_row("numerics", None, f"no GPU (Auto resolves to {resolved} on CPU)")]
    task = load_task_class(SEQUENCE)({"n_samples": 2048, "seq_len": 256, "channels": 8})
    x, y = sample_batch(task.load_data())
    times = {}
    for precision, tf32 in (("FP32", False), ("BF16", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        workload = StepWorkload(task, {"d_model": 256, "n_layers": 4}, 64, x, y, precision, device)
        model = task.build_model(workload.params).to(device)
        optimizer = workload.build_optimizer(model)
        batches = workload.micro_batches(lambda s, r: repeat_rows(s, r).to(device))
        for _ in range(3):
            workload.run(model, optimizer, batches)
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(10):
            workload.run(model, optimizer, batches)
        torch.cuda.synchronize(device)
        times[precision] = (time.perf_counter() - started) / 10
        fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
    speedup = times["FP32"] / times["BF16"]
    ok = resolved == "BF16" and speedup > 1 and fused
    return [
        _row(
            "numerics",
            ok,
            f"Auto -> {resolved}; fused AdamW {fused}; step FP32 {times['FP32'] * 1e3:.1f} ms, "
            f"BF16+TF32 {times['BF16'] * 1e3:.1f} ms ({speedup:.2f}x)",
            step_seconds=times,
        )
    ]


def check_driver(device: torch.device) -> list[Row]:
    report = cuda_report()
    if device.type != "cuda":
        return [_row("driver", None, f"no GPU: {report}")]
    return [_row("driver", torch.cuda.is_available(), report)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer estimate cases")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetune-gpu-check-") as directory:
        workdir = Path(directory)
        rows += check_driver(device)
        rows += check_estimate(device, args.quick)
        rows += check_oom(device)
        rows += check_baseline(device, workdir)
        rows += check_shared_device(device, workdir)
        rows += check_nvml(device)
        rows += check_numerics(device)
    print(f"{'check':<16} {'status':<6} detail")
    for row in rows:
        print(f"{row['check']:<16} {row['status']:<6} {row['detail']}")
    print(f"device {device}; {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    return 1 if any(row["status"] == "fail" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
