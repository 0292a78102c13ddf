"""The engine: one per runner process; many trials, each over every fold."""

from __future__ import annotations

import gc
import json
import logging
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kubetune_api.contract import TrialTelemetry
from kubetune_api.spec import StudySpec
from kubetune_study.pruning import report_every
from kubetune_study.search import max_pruning_steps
from trial_runner.device import pick_device
from trial_runner.engine._compile import compiled_since, dynamo_frames
from trial_runner.engine._data import FoldedData
from trial_runner.engine._fold import (
    Clock,
    FoldOutcome,
    FoldTrainer,
    OutOfMemory,
    StopReason,
)
from trial_runner.engine._resume import FoldRecord
from trial_runner.engine._trial import Reporter, TrialRun, VectorReporter
from trial_runner.memory import (
    MemoryPlanner,
    TrialBatches,
    TrialPlanner,
    effective_batch_size,
    sample_batch,
)
from trial_runner.step import MicroBatchPlan, resolve_precision
from trial_runner.task import Task
from trial_runner.telemetry import GpuMonitor

__all__ = ["Engine", "TrialResult", "epochs_for_trial"]

log = logging.getLogger("kubetune.engine")


@dataclass
class TrialResult:
    value: float
    metrics: dict[str, float]
    pruned: bool
    stop_reason: StopReason
    telemetry: TrialTelemetry = field(default_factory=lambda: TrialTelemetry())
    model: nn.Module | None = None


def epochs_for_trial(spec: StudySpec, trial_number: int) -> int:
    """The epoch budget of a trial: the last schedule entry whose fromTrial ≤ the number."""
    schedule = spec.training.epoch_schedule
    if not schedule:
        return spec.training.epochs
    epochs = schedule[0].epochs
    for entry in schedule:
        if entry.from_trial <= trial_number:
            epochs = entry.epochs
    return epochs


class Engine:
    """Runs trials of one study in this process, reusing data, folds and loaders.

    Created once per runner process: it loads the task's data, splits it into folds, builds
    its loaders and plans memory (:class:`~trial_runner.memory.TrialPlanner`) once. Each
    :meth:`run_trial` then trains one configuration over every fold.
    """

    def __init__(
        self,
        task: Task,
        spec: StudySpec,
        device: torch.device | None = None,
        *,
        stop_requested: threading.Event | None = None,
        seed: int = 0,
        memory_capacity_bytes: int | None = None,
    ) -> None:
        self.task = task
        self.spec = spec
        self.training = spec.training
        self.device = device or pick_device(spec)
        self.stop_requested = stop_requested or threading.Event()
        self.seed = seed
        self.precision = resolve_precision(spec.training.precision, self.device)
        self._gpu = GpuMonitor.create(self.device)
        self._configure_numerics()

        started = time.perf_counter()
        self.data = FoldedData(task.load_data(), self.training, self.device, seed)
        self.folds = self.data.folds
        self.setup_seconds = time.perf_counter() - started
        self._trainer = FoldTrainer(
            task, spec, self.data, precision=self.precision, stop_requested=self.stop_requested
        )
        #: A configuration (its parameters and effective batch) -> the micro-batch that ran
        #: after it ran out of memory at the planned one.
        self._micro_cap: dict[tuple[int, str], int] = {}
        # Planned at start-up, so the one-off cost is the process's, not the first trial's.
        memory = MemoryPlanner.for_spec(
            spec, task, sample_batch(self.data.data), self.device, memory_capacity_bytes
        )
        self.planner = TrialPlanner(spec, memory, validation_rows=self.data.validation_rows)
        self.trials_run = 0
        #: (graphs compiled, frames left to eager) during the last trial.
        self._compiled = (0, 0)

    def _configure_numerics(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.training.tf32
            torch.backends.cudnn.allow_tf32 = self.training.tf32
            torch.backends.cudnn.benchmark = self.training.cudnn_benchmark
        torch.set_float32_matmul_precision("high" if self.training.tf32 else "highest")

    def reset_loaders(self) -> None:
        """Re-create the DataLoader and its workers (only benchmarks want this)."""
        self.data.reset_loaders()

    def close(self) -> None:
        self.data.close()

    def effective_batch(self, params: Mapping[str, Any]) -> int:
        return effective_batch_size(self.spec, params)

    def plan_batches(self, params: Mapping[str, Any], effective: int) -> TrialBatches:
        """The trial's micro-batch and validation batch (see :class:`TrialPlanner`); after an
        OOM the micro-batch that then ran caps later trials of the same configuration (a
        retried trial, the same parameters again). Other configurations plan from their own
        estimate: one that ran out of memory says nothing about a smaller model."""
        return self.planner.plan_trial(
            params,
            effective,
            max_micro_batch=self._micro_cap.get(_configuration(params, effective)),
        )

    def run_trial(
        self,
        params: Mapping[str, Any],
        *,
        trial_number: int,
        reporter: Reporter | VectorReporter | None = None,
        micro_batch: int | None = None,
        resume: Sequence[FoldRecord] = (),
        on_fold: Callable[[FoldRecord], None] | None = None,
        on_step: Callable[[float], None] = lambda started: None,
    ) -> TrialResult:
        """Train one configuration over all folds and return its score and telemetry.

        Args:
            params: The trial's parameters.
            trial_number: The number its epoch budget and seeds derive from; a retry passes the
                number of the trial it resumes, so its folds train exactly as they would have.
            reporter: Where intermediate values go (the Optuna trial; with several objectives
                their vectors, :class:`VectorReporter`); ``None``: nowhere.
            micro_batch: Skips planning (benchmarks of systems that do not plan): that
                micro-batch, and a validation batch of four times it.
            resume: Folds a preempted run of this trial finished: they are not trained again,
                their intermediate values are reported again, in order, before the next fold.
            on_fold: Called with each fold this call trains, once it is finished and reported,
                unless the trial ends with it (the runner keeps them for a retry).
            on_step: Called after each training and validation step with the
                ``time.perf_counter()`` at which it started; what it raises ends the trial (the
                runner's :class:`~trial_runner.watchdog.Watchdog` keeps the trial's limits).
        """
        wall_start = time.perf_counter()
        self._gpu.reset()
        self._trainer.validation_cap = None
        compiled_before = dynamo_frames()
        effective = self.effective_batch(params)
        batches = self._trial_batches(params, effective, micro_batch)
        if self.device.type == "cuda":
            # After planning: the trial's peak is its training's, not the planner's probes'.
            torch.cuda.reset_peak_memory_stats(self.device)
        epochs = epochs_for_trial(self.spec, trial_number)
        clock = Clock()
        wilcoxon = self.spec.pruner.type == "Wilcoxon"
        run = TrialRun(
            reporter,
            max_epochs=max(max_pruning_steps(self.spec) // self.training.folds, epochs),
            per_epoch=report_every(self.spec) == "Epoch" and not wilcoxon,
            wilcoxon=wilcoxon,
            micro=batches.micro_batch,
        )
        carried = {r.fold: r for r in resume}
        self._run_folds(
            run,
            params,
            carried,
            on_fold,
            effective=effective,
            validation_batch=batches.validation_batch,
            epochs=epochs,
            seed=self.seed * 1_000_003 + trial_number,
            clock=clock,
            on_step=on_step,
        )
        self._compiled = compiled_since(compiled_before)
        if run.oom_retries:
            key = _configuration(params, effective)
            self._micro_cap[key] = min(run.micro, self._micro_cap.get(key, run.micro))
        self.trials_run += 1
        return self._result(run, wall_start, clock, epochs, effective, batches, resumed=carried)

    def _result(
        self,
        run: TrialRun,
        wall_start: float,
        clock: Clock,
        epochs: int,
        effective: int,
        batches: TrialBatches,
        *,
        resumed: Mapping[int, FoldRecord],
    ) -> TrialResult:
        """The trial's score (the mean over its folds), metrics and telemetry."""
        records = run.records
        metric_names = records[0].metrics.keys() if records else []
        return TrialResult(
            value=float(np.mean([r.score for r in records])) if records else float("nan"),
            metrics={m: float(np.mean([r.metrics[m] for r in records])) for m in metric_names},
            pruned=run.stop_reason in ("Pruned", "OutOfMemory"),
            stop_reason=run.stop_reason,
            telemetry=self._telemetry(
                wall_start,
                clock,
                records,
                run.stop_reason,
                epochs,
                run.oom_retries,
                MicroBatchPlan.for_sizes(effective, run.micro),
                batches,
                resumed=[r for r in records if r.fold in resumed],
            ),
            model=run.model,
        )

    def _trial_batches(
        self, params: Mapping[str, Any], effective: int, micro_batch: int | None
    ) -> TrialBatches:
        """The planned batches, or with ``micro_batch`` that micro-batch (capped at the
        effective batch) and a validation batch of four times it."""
        if micro_batch is None:
            return self.plan_batches(params, effective)
        micro = min(micro_batch, effective)
        rows = self.data.validation_rows
        return TrialBatches(micro, min(rows, max(4 * micro, 64)), None)

    def _run_folds(
        self,
        run: TrialRun,
        params: Mapping[str, Any],
        carried: Mapping[int, FoldRecord],
        on_fold: Callable[[FoldRecord], None] | None,
        *,
        seed: int,
        **train: Any,
    ) -> None:
        """Every fold in turn, those ``carried`` over replayed, until the trial ends."""
        last_fold = len(self.folds) - 1
        for fold_index, (train_idx, val_idx) in enumerate(self.folds):
            run.start_fold()
            previous = carried.get(fold_index)
            if previous is not None:
                if run.replay(previous):
                    return
                continue
            run.model = None  # the previous fold's model is not the result: free it first
            outcome, run.micro, retries = self._train_fold(
                fold_index,
                params,
                train_idx,
                val_idx,
                micro=run.micro,
                seed=seed + fold_index,
                report=run.epoch_reporter(fold_index),
                **train,
            )
            run.oom_retries += retries
            if outcome is None:
                run.stop_reason = "OutOfMemory"
                return
            if run.finish_fold(fold_index, outcome):
                return
            if on_fold is not None and fold_index < last_fold:
                on_fold(run.records[-1])

    def _train_fold(
        self,
        fold_index: int,
        params: Mapping[str, Any],
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        micro: int,
        **train: Any,
    ) -> tuple[FoldOutcome | None, int, int]:
        """One fold, retried at half the micro-batch after an out-of-memory error: the outcome
        (``None``: not even a micro-batch of 1 fits), the micro-batch that ran, the retries."""
        retries = 0
        while True:
            try:
                outcome = self._trainer.train(params, train_idx, val_idx, micro=micro, **train)
            except OutOfMemory:
                outcome = None
            if outcome is not None:
                return outcome, micro, retries
            # Freed outside the except block: the traceback held references to the activations
            # that filled the device.
            self._release_memory()
            if micro <= 1:
                return None, micro, retries
            micro //= 2
            retries += 1
            log.warning("out of memory: retrying fold %d with micro-batch %d", fold_index, micro)

    def _telemetry(
        self,
        wall_start: float,
        clock: Clock,
        records: list[FoldRecord],
        stop_reason: StopReason,
        epochs: int,
        oom_retries: int,
        plan: MicroBatchPlan,
        batches: TrialBatches,
        *,
        resumed: list[FoldRecord],
    ) -> TrialTelemetry:
        wall = time.perf_counter() - wall_start
        cuda = self.device.type == "cuda"
        gpu = self._gpu.summary()
        return {
            "wall_seconds": round(wall, 4),
            "step_seconds": round(clock.step, 4),
            "data_wait_seconds": round(max(clock.train - clock.step, 0.0), 4),
            "eval_seconds": round(clock.eval, 4),
            # Everything that is not training or validation compute: batches, model build,
            # estimates, bookkeeping.
            "overhead_seconds": round(max(wall - clock.step - clock.eval, 0.0), 4),
            # Every fold of the trial, those a preempted run finished included.
            "epochs_run": sum(r.epochs for r in records),
            "epochs_budget": epochs,
            "folds_run": len(records),
            "folds": self.training.folds,
            # Carried over from a preempted run of this trial, not trained again.
            "folds_resumed": len(resumed),
            "epochs_resumed": sum(r.epochs for r in resumed),
            "stop_reason": stop_reason,
            "effective_batch": plan.effective_batch,
            "micro_batch": plan.micro_batch,
            "accumulation_steps": plan.accumulation_steps,
            "validation_batch": min(
                batches.validation_batch, self._trainer.validation_cap or batches.validation_batch
            ),
            "oom_retries": oom_retries,
            "precision": self.precision,
            "tf32": self.training.tf32 and cuda,
            "cudnn_benchmark": self.training.cudnn_benchmark and cuda,
            "fused_optimizer": self._trainer.fused,
            "pin_memory": self.data.pin_memory,
            "compile": self.training.compile and self._compiled[1] == 0,
            "compile_graphs": self._compiled[0],
            "device": str(self.device),
            "data_on_device": self.data.on_device,
            "estimated_peak_bytes": batches.estimated_peak_bytes,
            "peak_memory_bytes": self._peak_memory(),
            "trial_in_process": self.trials_run,
            "gpu_utilization_mean": gpu["gpu_utilization_mean"],
            "gpu_memory_used_max": gpu["gpu_memory_used_max"],
        }

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _peak_memory(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        # CPU: the process's resident-set high-water mark (KiB on Linux).
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _configuration(params: Mapping[str, Any], effective: int) -> tuple[int, str]:
    """A configuration's key: its effective batch and its parameters."""
    return effective, json.dumps(dict(params), sort_keys=True, default=str)
