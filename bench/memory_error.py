"""How far is the memory estimate from the measured peak? (CPU, built-in tasks)

    nice python bench/memory_error.py            # the table in docs/benchmarks.md
    nice python bench/memory_error.py --quick    # two rows, for a smoke test

For each task, configuration, micro-batch and precision, the same training steps (two
optimizer steps of :func:`trial_runner.step.train_step`, the engine's own step, as
:class:`trial_runner.memory.StepWorkload` runs them) are

* estimated with FakeTensor + MemTracker (no real memory),
* estimated with the Analytic fallback (forced, as if fake tensors had failed),
* measured for real from the CPU allocator's own allocation records (torch.profiler with
  ``profile_memory=True``: every allocation and free, including those no dispatch mode sees),
* and, as a check of that measurement, measured from the process's resident set in a fresh
  process (the kernel's peak RSS during the steps, VmHWM reset just before them, minus the RSS
  before them, plus the bytes live before them; after a one-sample warm-up step on another
  model so that code pages of the kernels are already resident).
  RSS includes allocator caching and page granularity, so it is only meaningful for the rows
  of tens of MiB and more.

Error = estimate / allocator-measured - 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from trial_runner.memory import StepWorkload, estimate_peak, measure_peak, sample_batch
from trial_runner.memory._analytic import estimate_analytic
from trial_runner.memory._workload import repeat_rows, storage_bytes
from trial_runner.task import load_task_class

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Case:
    entrypoint: str
    config: dict[str, Any]
    params: dict[str, Any]
    micro_batch: int
    precision: str

    @property
    def label(self) -> str:
        name = self.entrypoint.rsplit(":", 1)[-1]
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{name}({params})"


DIGITS = "trial_runner.tasks.digits:DigitsMLP"
SEQUENCE = "trial_runner.tasks.sequence:SequenceTransformer"
SEQ_CONFIG = {"n_samples": 256, "seq_len": 64, "channels": 4}

CASES = [
    Case(DIGITS, {}, {"hidden_size": 128, "n_layers": 2}, 32, "FP32"),
    Case(DIGITS, {}, {"hidden_size": 256, "n_layers": 2}, 128, "FP32"),
    Case(DIGITS, {}, {"hidden_size": 2048, "n_layers": 4}, 512, "FP32"),
    Case(DIGITS, {}, {"hidden_size": 256, "n_layers": 2}, 128, "BF16"),
    Case(SEQUENCE, SEQ_CONFIG, {"d_model": 64, "n_layers": 2}, 32, "FP32"),
    Case(SEQUENCE, SEQ_CONFIG, {"d_model": 64, "n_layers": 2}, 32, "BF16"),
    Case(SEQUENCE, SEQ_CONFIG, {"d_model": 128, "n_layers": 4}, 64, "FP32"),
    Case(SEQUENCE, SEQ_CONFIG, {"d_model": 256, "n_layers": 4}, 128, "FP32"),
]
QUICK = [CASES[1], CASES[4]]


def _workload(case: Case, micro_batch: int | None = None) -> StepWorkload:
    task = load_task_class(case.entrypoint)(case.config)
    x, y = sample_batch(task.load_data())
    return StepWorkload(
        task, case.params, micro_batch or case.micro_batch, x, y, case.precision, CPU
    )


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss_child(case: Case) -> int:
    """In a fresh process: bytes live before the steps + the RSS the steps added at peak.

    The kernel's high-water mark (VmHWM) is reset just before the steps (``clear_refs``)."""
    import gc

    torch.set_num_threads(1)
    # Warm-up at one sample, on another model: the kernels' code pages and one-off buffers
    # become resident now, not during the measured steps.
    warm_up = _workload(case, micro_batch=1)
    model = warm_up.task.build_model(case.params)
    warm_up.run(model, warm_up.build_optimizer(model), warm_up.micro_batches(repeat_rows))
    del model
    gc.collect()
    workload = _workload(case)
    model = workload.task.build_model(case.params)
    model.train()
    optimizer = workload.build_optimizer(model)
    batches = workload.micro_batches(repeat_rows)
    before = storage_bytes([*model.parameters(), *model.buffers(), *batches[0]])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss_before = _status_bytes("VmRSS")
    workload.run(model, optimizer, batches)
    return before + _status_bytes("VmHWM") - rss_before


def run_case(case: Case, *, rss: bool) -> dict[str, Any]:
    workload = _workload(case)
    started = time.perf_counter()
    fake = estimate_peak(workload)
    fake_seconds = time.perf_counter() - started
    started = time.perf_counter()
    analytic = estimate_analytic(workload, reason="forced for the benchmark")
    analytic_seconds = time.perf_counter() - started
    started = time.perf_counter()
    measured = measure_peak(workload)
    measure_seconds = time.perf_counter() - started
    rss_measured = None
    if rss:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", json.dumps(case.__dict__)],
            check=True,
            capture_output=True,
            text=True,
        )
        rss_measured = int(out.stdout.strip().splitlines()[-1])
    return {
        "case": case.label,
        "micro_batch": case.micro_batch,
        "precision": case.precision,
        "fake_method": fake.method,
        "fake": fake.peak_bytes,
        "analytic": analytic.peak_bytes,
        "measured": measured,
        "rss": rss_measured,
        "fake_seconds": fake_seconds,
        "analytic_seconds": analytic_seconds,
        "measure_seconds": measure_seconds,
    }


def _mib(value: int | None) -> str:
    if value is None or value < 0:
        return "–"
    return f"{value / 2**20:.2f}"


def _err(estimate: int, measured: int) -> str:
    return f"{(estimate / measured - 1) * 100:+.1f}%"


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model (params) | micro-batch | precision | measured MiB (allocator) | "
        "FakeTensor MiB | error | Analytic MiB | error | RSS check MiB | FakeTensor s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['micro_batch']} | {r['precision']} | {_mib(r['measured'])} | "
            f"{_mib(r['fake'])} ({r['fake_method']}) | {_err(r['fake'], r['measured'])} | "
            f"{_mib(r['analytic'])} | {_err(r['analytic'], r['measured'])} | "
            f"{_mib(r['rss'])} | {r['fake_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rows only")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS cross-check")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(rss_child(Case(**json.loads(args.rss_child))))
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared 2-core machine: no OpenMP threads spinning
    rows = []
    for case in QUICK if args.quick else CASES:
        row = run_case(case, rss=not args.no_rss)
        rows.append(row)
        print(
            f"{row['case']} mb={row['micro_batch']} {row['precision']}: "
            f"measured {_mib(row['measured'])} MiB, FakeTensor {_mib(row['fake'])}, "
            f"Analytic {_mib(row['analytic'])}, RSS {_mib(row['rss'])}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"intra-op threads {torch.get_num_threads()}"
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
