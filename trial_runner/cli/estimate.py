"""``kubetune estimate``: peak training memory of the largest configuration of a study.

The operator runs it as a short CPU pod (the estimate pod) and reads its JSON from the pod's
termination message to size the runner pods; users run it to see what a study needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from kubetune_api.spec import HPOStudy
from trial_runner.cli._common import TERMINATION_MESSAGE_LIMIT, StepLog, load_study_or_env
from trial_runner.memory import (
    MemoryPlanner,
    MicroBatchPlan,
    NoMicroBatchFits,
    available_memory,
    effective_batch_size,
    largest_configuration,
    sample_batch,
)
from trial_runner.memory._workload import first_line, mib

if TYPE_CHECKING:
    import torch


__all__ = [
    "TERMINATION_MESSAGE_LIMIT",
    "cmd_estimate",
    "estimate_for_study",
    "format_estimate",
    "gpu_peaks",
    "run_estimate",
    "termination_message",
]


def cmd_estimate(args: argparse.Namespace) -> int:
    study = load_study_or_env(args.study)
    return run_estimate(
        study, as_json=args.json, termination_message_path=args.termination_message_path
    )


def estimate_for_study(
    study: HPOStudy, device: torch.device, step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The estimate ``kubetune estimate`` prints and the operator reads; ``step`` is told
    what is being done (each step can take seconds).

    Keys: ``peakBytes`` (the training step's peak at the chosen micro-batch), ``method``,
    ``config`` (the largest configuration), ``microBatch``, ``accumulationSteps`` (the largest
    micro-batch whose peak plus headroom fits this device's free memory),
    ``effectiveBatch``, ``headroomBytes`` (``peakBytes`` x ``resources.memoryHeadroom``),
    ``fullBatchPeakBytes`` (the peak without splitting the batch beyond
    ``training.maxMicroBatch``: what a device sized by the operator needs to train unsplit),
    ``fitsDevice`` (false when not even one sample fits here; ``peakBytes`` is then the
    one-sample peak), ``dataBytes`` (the task's tensors as loaded; they stay resident in the
    runner), ``device`` and ``precision`` (as resolved on this device), and ``gpuPeaks``
    (:func:`gpu_peaks`: what a GPU needs, whatever this device is; none for
    ``accelerator: CPU``).
    """
    import torch

    from trial_runner.task import load_task_class

    say = step or (lambda _message: None)
    spec = study.spec
    say(f"loading the task {spec.task.entrypoint} and its data")
    task = load_task_class(spec.task.entrypoint)(spec.task.config)
    data = task.load_data()
    sample = sample_batch(data)
    planner = MemoryPlanner.for_spec(
        spec, task, sample, device, capacity_bytes=available_memory(device)
    )
    config = largest_configuration(spec)
    effective = effective_batch_size(spec, config)
    upper = min(effective, spec.training.max_micro_batch or effective)
    full_plan = MicroBatchPlan.for_sizes(effective, upper)
    say(f"estimating the largest configuration at micro-batch {upper} on {device}")
    full = planner.estimate(config, upper, accumulation_steps=full_plan.accumulation_steps)
    fits_device = True
    if planner.fits(full):
        plan, estimate = full_plan, full
    else:
        say("it does not fit this device: searching the largest micro-batch that does")
        try:
            plan, estimate = planner.plan_training(config, effective, max_micro_batch=upper)
        except NoMicroBatchFits:
            # This machine cannot train it, but the operator sizes another one: report the
            # smallest need (micro-batch 1) instead of failing.
            fits_device = False
            plan = MicroBatchPlan.for_sizes(effective, 1)
            estimate = planner.estimate(config, 1, accumulation_steps=plan.accumulation_steps)
    data_bytes = 0
    for value in (data.inputs, data.targets):
        if isinstance(value, torch.Tensor):
            data_bytes += value.untyped_storage().nbytes()
    headroom = spec.resources.headroom_fraction
    # A study that runs on CPU only has no GPU to size.
    peaks = [] if spec.resources.accelerator == "CPU" else gpu_peaks(study, planner, say)
    say(f"done: {mib(estimate.peak_bytes)} peak ({estimate.method})")
    return {
        "peakBytes": estimate.peak_bytes,
        "method": estimate.method,
        "config": config,
        "microBatch": plan.micro_batch,
        "accumulationSteps": plan.accumulation_steps,
        "effectiveBatch": effective,
        "headroomBytes": int(estimate.peak_bytes * headroom),
        "fullBatchPeakBytes": full.peak_bytes,
        "fitsDevice": fits_device,
        "dataBytes": data_bytes,
        "device": str(device),
        "precision": planner.precision,
        "gpuPeaks": peaks,
        "detail": estimate.detail,
    }


def gpu_peaks(
    study: HPOStudy, planner: MemoryPlanner, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The largest configuration's peaks at each precision a GPU may train it at (``Auto``:
    BF16 on GPUs with native bfloat16, FP32 on older ones; else the one stated), estimated here
    whatever this device's memory: ``fullBatchPeakBytes`` (the batch unsplit, as far as
    ``training.maxMicroBatch`` allows) and ``microBatchPeakBytes`` (micro-batches of one
    sample, the least a runner can train it with). The operator sizes GPUs from them; an
    estimate that fails at one precision is left out (the operator then uses ``peakBytes``).
    ``planner`` is the study's planner on this device: at its own precision its cached
    estimates are reused."""
    spec = study.spec
    precisions = (
        ["BF16", "FP32"] if spec.training.precision == "Auto" else [spec.training.precision]
    )
    config = largest_configuration(spec)
    effective = effective_batch_size(spec, config)
    upper = min(effective, spec.training.max_micro_batch or effective)
    steps = MicroBatchPlan.for_sizes(effective, upper).accumulation_steps
    peaks: list[dict[str, Any]] = []
    for precision in precisions:
        at = planner
        if precision != planner.precision:
            at = MemoryPlanner(
                planner.task,
                planner.sample,
                precision=precision,
                device=planner.device,
                headroom=planner.headroom,
                fused=planner.fused,
            )
        say(f"estimating it for a GPU at {precision}")
        try:
            full = at.estimate(config, upper, accumulation_steps=steps)
            least = at.estimate(config, 1, accumulation_steps=effective)
        except Exception as error:  # advisory: the operator falls back to peakBytes
            say(f"no estimate at {precision}: {first_line(error)}")
            continue
        peaks.append(
            {
                "precision": precision,
                "fullBatchPeakBytes": full.peak_bytes,
                "microBatchPeakBytes": least.peak_bytes,
                "method": full.method,
            }
        )
    return peaks


def termination_message(result: Mapping[str, Any]) -> str:
    """Compact JSON of ``result`` within Kubernetes' 4096-byte termination-message limit.

    ``detail`` is dropped first, then long config values are shortened, then the config goes.
    """
    reduced = dict(result)
    text = json.dumps(reduced, separators=(",", ":"), default=str)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    reduced.pop("detail", None)
    reduced["config"] = {
        k: (v if not isinstance(v, str) or len(v) <= 64 else v[:61] + "...")
        for k, v in dict(result.get("config", {})).items()
    }
    text = json.dumps(reduced, separators=(",", ":"), default=str)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    reduced["config"] = {}
    reduced["configTruncated"] = True
    return json.dumps(reduced, separators=(",", ":"), default=str)


def format_estimate(study: HPOStudy, result: Mapping[str, Any]) -> str:
    """The human-readable table of ``kubetune estimate``."""
    config = ", ".join(f"{k}={v}" for k, v in result["config"].items())
    rows = [
        ("Study", study.name),
        ("Task", study.spec.task.entrypoint),
        ("Device", str(result.get("device", ""))),
        ("Largest config", config),
        ("Precision", str(result.get("precision", study.spec.training.precision))),
        (
            "Batch",
            f"effective {result['effectiveBatch']} = micro-batch {result['microBatch']} "
            f"x {result['accumulationSteps']} accumulation step(s)",
        ),
        ("Method", str(result["method"])),
        ("Peak (training step)", mib(int(result["peakBytes"]))),
        (
            "Headroom",
            f"{mib(int(result['headroomBytes']))} ({study.spec.resources.memory_headroom})",
        ),
        ("Peak + headroom", mib(int(result["peakBytes"]) + int(result["headroomBytes"]))),
        (
            "Peak, batch unsplit",
            f"{mib(int(result.get('fullBatchPeakBytes', 0)))}"
            + ("" if result.get("fitsDevice", True) else " (does not fit this device)"),
        ),
        *(
            (
                f"GPU at {p['precision']}",
                f"{mib(int(p['fullBatchPeakBytes']))} batch unsplit, "
                f"{mib(int(p['microBatchPeakBytes']))} in one-sample micro-batches",
            )
            for p in result.get("gpuPeaks", [])
        ),
        ("Data held in memory", mib(int(result.get("dataBytes", 0)))),
        ("Detail", str(result.get("detail", ""))),
    ]
    if study.spec.resources.peak_memory:
        rows.append(
            ("Note", f"spec.resources.peakMemory={study.spec.resources.peak_memory} overrides")
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_estimate(
    study: HPOStudy,
    *,
    as_json: bool,
    termination_message_path: str | None,
    device: torch.device | None = None,
    out: TextIO | None = None,
) -> int:
    """``kubetune estimate``: print the estimate (table or JSON), write the termination message.

    Returns the exit code: 0, or 1 when the estimate fails (the error is printed to stderr
    and written as ``{"error": ...}`` to the termination message). Progress lines go to
    stderr, so ``--json`` output stays parseable.
    """
    import torch

    stream = out or sys.stdout
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        result = estimate_for_study(study, device, StepLog("estimate"))
    except Exception as exc:
        message = f"{type(exc).__name__}: {first_line(exc)}"
        print(f"kubetune estimate: {message}", file=sys.stderr)
        _write_termination(termination_message_path, json.dumps({"error": message[:3000]}))
        return 1
    text = termination_message(result)
    _write_termination(termination_message_path, text)
    if as_json:
        print(json.dumps(result, indent=2, default=str), file=stream)
    else:
        print(format_estimate(study, result), file=stream)
    return 0


def _write_termination(path: str | None, text: str) -> None:
    if path:
        with open(path, "w") as f:
            f.write(text)
