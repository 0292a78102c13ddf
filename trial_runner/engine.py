"""The warm training engine: data and loaders once per process, many trials after that.

:class:`Engine` is created once per runner process. It loads the task's data, splits it into
folds and builds its loaders once; :meth:`Engine.run_trial` then trains one configuration:
K folds, each with early stopping and a validation cadence, effective batches reached by
gradient accumulation over memory-safe micro-batches, mixed precision, intermediate reports
for the pruner, OOM recovery at half the micro-batch, and per-trial telemetry.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from trial_runner.memory import (
    MemoryEstimate,
    MicroBatchPlan,
    NoMicroBatchFits,
    available_memory,
    effective_batch_size,
    largest_configuration,
    plan_for_config,
    resolve_precision,
    sample_batch,
)
from trial_runner.search import max_pruning_steps
from trial_runner.spec import StudySpec, parse_number
from trial_runner.task import Task, TaskData
from trial_runner.telemetry import GpuMonitor

__all__ = [
    "Engine",
    "Interrupted",
    "Reporter",
    "TrialResult",
    "epochs_for_trial",
    "is_out_of_memory",
    "make_folds",
]

log = logging.getLogger("kubetune.engine")

StopReason = Literal["Completed", "EarlyStopped", "Pruned", "OutOfMemory"]


class Reporter(Protocol):
    """What the engine needs from a trial (an ``optuna.Trial`` fits)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class Interrupted(Exception):
    """The runner was asked to stop (SIGTERM) in the middle of a trial."""


@dataclass
class TrialResult:
    value: float
    metrics: dict[str, float]
    pruned: bool
    stop_reason: StopReason
    telemetry: dict[str, Any] = field(default_factory=dict)
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


def make_folds(
    n: int, folds: int, labels: np.ndarray | None, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs; stratified when labels are given.

    ``folds == 1`` is a single 80/20 holdout split.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    index = np.arange(n)
    if folds == 1:
        stratify = labels if labels is not None and _stratifiable(labels, 5) else None
        train, val = train_test_split(index, test_size=0.2, random_state=seed, stratify=stratify)
        return [(np.sort(train), np.sort(val))]
    if labels is not None and _stratifiable(labels, folds):
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(index, labels)]
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(index)]


def _stratifiable(labels: np.ndarray, folds: int) -> bool:
    _, counts = np.unique(labels, return_counts=True)
    return bool(counts.min() >= folds)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or a CPU allocation failure raised by torch."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc) or "DefaultCPUAllocator: can't allocate memory" in str(exc)
    )


class _OutOfMemory(Exception):
    pass


class _ReconfigurableBatchSampler(Sampler[list[int]]):
    """Yields index batches; indices and batch size change per fold/trial without new workers.

    The batch sampler lives in the main process, so a persistent DataLoader picks up the new
    configuration at the next ``iter()``; its worker processes are never re-created.
    """

    def __init__(self) -> None:
        self.indices: np.ndarray = np.arange(0)
        self.batch_size = 1
        self.shuffle = False
        self.seed = 0

    def configure(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> None:
        self.indices, self.batch_size, self.shuffle, self.seed = indices, batch_size, shuffle, seed

    def __iter__(self) -> Iterator[list[int]]:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng(self.seed).permutation(order)
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


class Engine:
    """Runs trials of one study in this process, reusing data, folds and loaders."""

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
        self.device = device or _pick_device(spec)
        self.stop_requested = stop_requested or threading.Event()
        self.seed = seed
        # What training may use on the device; measured when not given.
        self.memory_capacity_bytes = memory_capacity_bytes
        self.precision = resolve_precision(spec.training.precision, self.device)
        self._gpu = GpuMonitor.create(self.device)
        self._configure_numerics()

        started = time.perf_counter()
        self.data: TaskData = task.load_data()
        labels = None
        if self.data.classification and self.data.targets is not None:
            labels = self.data.targets.detach().cpu().numpy()
            if labels.ndim != 1:
                labels = None
        self.folds = make_folds(len(self.data), self.training.folds, labels, seed)
        self._on_device = self._place_tensors()
        self._sampler = _ReconfigurableBatchSampler()
        self._loader: DataLoader[Any] | None = None
        if not self._on_device:
            self._loader = self._build_loader()
        self.setup_seconds = time.perf_counter() - started
        self._micro_cap: dict[int, int] = {}  # effective batch -> largest micro-batch that ran
        self._largest_estimate: tuple[bool, int | None] | None = None
        self._sample = sample_batch(self.data)
        # Estimated at start-up, so the one-off cost is the process's, not the first trial's.
        self._largest_estimate = self._estimate_largest()
        self.trials_run = 0

    # ------------------------------------------------------------------ setup

    def _configure_numerics(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.training.tf32
            torch.backends.cudnn.allow_tf32 = self.training.tf32
            torch.backends.cudnn.benchmark = self.training.cudnn_benchmark
        torch.set_float32_matmul_precision("high" if self.training.tf32 else "highest")

    def _place_tensors(self) -> bool:
        """Keep tensor data on the device when it fits; True when batches index it directly."""
        data = self.data
        if not isinstance(data.inputs, torch.Tensor) or data.targets is None:
            return False
        if self.training.data_loader_workers > 0:
            return False
        size = data.inputs.element_size() * data.inputs.nelement()
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if size > 0.25 * free:
                return False
        self._inputs = data.inputs.to(self.device)
        self._targets = data.targets.to(self.device)
        return True

    def _build_loader(self) -> DataLoader[Any]:
        dataset: Dataset[Any]
        if isinstance(self.data.inputs, torch.Tensor):
            assert self.data.targets is not None
            dataset = TensorDataset(self.data.inputs, self.data.targets)
        else:
            dataset = self.data.inputs
        workers = self.training.data_loader_workers
        return DataLoader(
            dataset,
            batch_sampler=self._sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.training.pin_memory and self.device.type == "cuda",
            multiprocessing_context="spawn" if workers > 0 else None,
            # Its own generator: creating an iterator must not consume the global one that
            # seeds each trial's model and dropout.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def reset_loaders(self) -> None:
        """Re-create the DataLoader and its workers (only benchmarks want this)."""
        if self._on_device:
            return
        self._loader = None
        gc.collect()
        self._loader = self._build_loader()

    def close(self) -> None:
        self._loader = None
        gc.collect()

    # ------------------------------------------------------------------ batches

    def _batches(
        self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._on_device:
            order = torch.as_tensor(indices, device=self.device)
            if shuffle:
                gen = torch.Generator().manual_seed(seed)
                order = order[torch.randperm(len(order), generator=gen).to(self.device)]
            # One gather per epoch, then contiguous views made by one split call each (slicing
            # in Python cost more than the data movement for small models).
            inputs, targets = self._inputs[order], self._targets[order]
            yield from zip(
                torch.split(inputs, batch_size), torch.split(targets, batch_size), strict=True
            )
            return
        assert self._loader is not None
        self._sampler.configure(indices, batch_size, shuffle, seed)
        non_blocking = self.training.pin_memory and self.device.type == "cuda"
        for inputs, targets in self._loader:
            yield (
                inputs.to(self.device, non_blocking=non_blocking),
                targets.to(self.device, non_blocking=non_blocking),
            )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        precision = self.precision
        if precision == "FP32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "BF16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ trials

    def effective_batch(self, params: Mapping[str, Any]) -> int:
        return effective_batch_size(self.spec, params)

    def plan_micro_batch(self, params: Mapping[str, Any], effective: int) -> tuple[int, int | None]:
        """The micro-batch for a configuration and the estimated peak memory behind it.

        Estimate first: once per process the largest configuration of the search space is
        estimated; when it fits the device at its full effective batch, every configuration
        does and trials skip the estimate. Otherwise each configuration is planned from its
        own estimate. An OOM that still happens halves the micro-batch (see ``run_trial``), and
        the size that worked is remembered for the next trial with the same effective batch.
        """
        upper = min(effective, self.training.max_micro_batch or effective)
        upper = min(upper, self._micro_cap.get(effective, upper))
        if self._largest_estimate is None:
            self._largest_estimate = self._estimate_largest()
        fits_all, peak = self._largest_estimate
        if fits_all or peak is None:
            return upper, peak
        try:
            plan, estimate = self._plan(params, effective, upper)
        except NoMicroBatchFits:
            return 1, None  # the OOM path decides: retry at 1, then prune
        return plan.micro_batch, estimate.peak_bytes

    def _plan(
        self, params: Mapping[str, Any], effective: int, upper: int
    ) -> tuple[MicroBatchPlan, MemoryEstimate]:
        return plan_for_config(
            self.task,
            params,
            effective,
            capacity_bytes=self._capacity(),
            headroom=parse_number(self.spec.resources.memory_headroom),
            sample_input=self._sample[0],
            sample_target=self._sample[1],
            precision=self.precision,
            device=self.device,
            max_micro_batch=upper,
            fused=self._fused(),
        )

    def _capacity(self) -> int:
        if self.memory_capacity_bytes is not None:
            return self.memory_capacity_bytes
        return available_memory(self.device)

    def _estimate_largest(self) -> tuple[bool, int | None]:
        config = largest_configuration(self.spec)
        effective = effective_batch_size(self.spec, config)
        upper = min(effective, self.training.max_micro_batch or effective)
        try:
            plan, estimate = self._plan(config, effective, upper)
        except NoMicroBatchFits:
            log.info("the largest configuration does not fit: planning each trial's micro-batch")
            return False, 0
        except Exception as exc:  # estimation is advisory; OOM halving still protects trials
            log.warning("memory estimate failed (%s); relying on OOM retries", exc)
            return True, None
        fits_all = plan.micro_batch == upper
        log.info(
            "largest configuration: %.1f MiB peak (%s) at micro-batch %d; %s",
            estimate.peak_bytes / 2**20,
            estimate.method,
            plan.micro_batch,
            "every configuration fits" if fits_all else "planning each trial's micro-batch",
        )
        return fits_all, estimate.peak_bytes

    def run_trial(
        self,
        params: Mapping[str, Any],
        *,
        trial_number: int,
        reporter: Reporter | None = None,
        estimated_peak_bytes: int | None = None,
        micro_batch: int | None = None,
    ) -> TrialResult:
        """Train one configuration over all folds and return its score and telemetry."""
        wall_start = time.perf_counter()
        self._gpu.reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        effective = self.effective_batch(params)
        if micro_batch is None:
            micro, estimated_peak_bytes = self.plan_micro_batch(params, effective)
        else:
            micro = min(micro_batch, effective)
        epochs = epochs_for_trial(self.spec, trial_number)
        clock = _Clock()
        fold_scores: list[float] = []
        fold_metrics: list[dict[str, float]] = []
        epochs_run = 0
        stop_reason: StopReason = "Completed"
        oom_retries = 0
        model: nn.Module | None = None
        pruned = False
        wilcoxon = self.spec.pruner.type == "Wilcoxon"
        per_epoch = self.training.report_every == "Epoch" and not wilcoxon
        max_epochs = max(max_pruning_steps(self.spec) // self.training.folds, epochs)
        seed = self.seed * 1_000_003 + trial_number

        def epoch_reporter(fold: int) -> Callable[[float, int], bool]:
            return lambda value, epoch: self._report(reporter, value, fold * max_epochs + epoch)

        for fold_index, (train_idx, val_idx) in enumerate(self.folds):
            while True:
                failed = False
                try:
                    outcome = self._train_fold(
                        params,
                        train_idx,
                        val_idx,
                        effective=effective,
                        micro=micro,
                        epochs=epochs,
                        seed=seed + fold_index,
                        clock=clock,
                        report=epoch_reporter(fold_index) if per_epoch else None,
                    )
                except _OutOfMemory:
                    failed = True
                if not failed:
                    break
                # Freed outside the except block: the traceback held references to the
                # activations that filled the device.
                self._release_memory()
                if micro <= 1:
                    stop_reason = "OutOfMemory"
                    pruned = True
                    break
                micro = max(1, micro // 2)
                oom_retries += 1
                log.warning(
                    "out of memory: retrying fold %d with micro-batch %d", fold_index, micro
                )
            if stop_reason == "OutOfMemory":
                break
            model, score, metrics, fold_epochs, fold_stop = outcome
            epochs_run += fold_epochs
            fold_scores.append(score)
            fold_metrics.append(metrics)
            if fold_stop == "EarlyStopped":
                stop_reason = "EarlyStopped"
            if fold_stop == "Pruned":
                pruned, stop_reason = True, "Pruned"
                break
            if not per_epoch:
                reported = score if wilcoxon else float(np.mean(fold_scores))
                if self._report(reporter, reported, fold_index):
                    pruned, stop_reason = True, "Pruned"
                    break
        self._micro_cap[effective] = micro
        self.trials_run += 1

        metric_names = fold_metrics[0].keys() if fold_metrics else []
        mean_metrics = {m: float(np.mean([fm[m] for fm in fold_metrics])) for m in metric_names}
        value = float(np.mean(fold_scores)) if fold_scores else float("nan")
        wall = time.perf_counter() - wall_start
        accumulation = MicroBatchPlan.for_sizes(effective, micro).accumulation_steps
        telemetry: dict[str, Any] = {
            "wall_seconds": round(wall, 4),
            "step_seconds": round(clock.step, 4),
            "data_wait_seconds": round(max(clock.train - clock.step, 0.0), 4),
            "eval_seconds": round(clock.eval, 4),
            # Everything that is not training or validation compute: batches, model build,
            # estimates, bookkeeping.
            "overhead_seconds": round(max(wall - clock.step - clock.eval, 0.0), 4),
            "epochs_run": epochs_run,
            "epochs_budget": epochs,
            "folds_run": len(fold_scores),
            "folds": self.training.folds,
            "stop_reason": stop_reason,
            "effective_batch": effective,
            "micro_batch": micro,
            "accumulation_steps": accumulation,
            "oom_retries": oom_retries,
            "precision": self.precision,
            "tf32": self.training.tf32 and self.device.type == "cuda",
            "cudnn_benchmark": self.training.cudnn_benchmark and self.device.type == "cuda",
            "fused_optimizer": self._fused(),
            "pin_memory": self.training.pin_memory and self.device.type == "cuda",
            "compile": self.training.compile,
            "device": str(self.device),
            "data_on_device": self._on_device,
            "estimated_peak_bytes": estimated_peak_bytes,
            "peak_memory_bytes": self._peak_memory(),
            "trial_in_process": self.trials_run,
        }
        telemetry.update(self._gpu.summary())
        return TrialResult(
            value=value,
            metrics=mean_metrics,
            pruned=pruned,
            stop_reason=stop_reason,
            telemetry=telemetry,
            model=model,
        )

    def _report(self, reporter: Reporter | None, value: float, step: int) -> bool:
        if reporter is None or math.isnan(value):
            return False
        reporter.report(value, step)
        return reporter.should_prune()

    def _fused(self) -> bool:
        return self.training.fused_optimizer and self.device.type == "cuda"

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _peak_memory(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        # CPU: the process's resident-set high-water mark (KiB on Linux).
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _build(self, params: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = self.task.build_model(params).to(self.device)
        optimizer = self.task.build_optimizer(
            model, params, fused=self._fused(), foreach=not self._fused()
        )
        if self.training.compile:
            model = _compiled(model)
        return model, optimizer

    def _train_fold(
        self,
        params: Mapping[str, Any],
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        effective: int,
        micro: int,
        epochs: int,
        seed: int,
        clock: _Clock,
        report: Callable[[float, int], bool] | None,
    ) -> tuple[nn.Module, float, dict[str, float], int, StopReason]:
        try:
            model, optimizer = self._build(params, seed)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise _OutOfMemory from None
            raise
        scaler = torch.amp.GradScaler(
            enabled=self.precision == "FP16" and self.device.type == "cuda"
        )
        stopper = _EarlyStopper(self.spec)
        best_score: float | None = None
        best_metrics: dict[str, float] = {}
        last_score: float = float("nan")
        last_metrics: dict[str, float] = {}
        epochs_run = 0
        stop: StopReason = "Completed"
        cadence = self.training.validation_every
        for epoch in range(epochs):
            if self.stop_requested.is_set():
                raise Interrupted
            model.train()
            started = time.perf_counter()
            try:
                for inputs, targets in self._batches(
                    train_idx, effective, True, seed * 997 + epoch
                ):
                    step_started = time.perf_counter()
                    self._step(model, optimizer, scaler, inputs, targets, micro)
                    clock.step += time.perf_counter() - step_started
                    if self.stop_requested.is_set():
                        raise Interrupted
            except Interrupted:
                raise
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise _OutOfMemory from None
                raise
            finally:
                clock.train += time.perf_counter() - started
            epochs_run += 1
            last_epoch = epoch == epochs - 1
            if (epoch + 1) % cadence and not last_epoch:
                continue
            started = time.perf_counter()
            last_score, last_metrics = self._evaluate(model, val_idx, micro)
            clock.eval += time.perf_counter() - started
            if best_score is None or self._better(last_score, best_score):
                best_score, best_metrics = last_score, last_metrics
            if report is not None and report(last_score, epoch):
                stop = "Pruned"
                break
            if stopper.should_stop(last_score):
                stop = "EarlyStopped"
                break
        # The fold's score is its best validated epoch when early stopping restores the best,
        # otherwise the final one.
        if self.training.early_stopping is not None and best_score is not None:
            return model, best_score, best_metrics, epochs_run, stop
        return model, last_score, last_metrics, epochs_run, stop

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.spec.objective.direction == "Maximize" else a < b

    def _step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        micro: int,
    ) -> None:
        """One optimizer step over an effective batch, accumulated over micro-batches."""
        batch = int(inputs.shape[0])
        plan = MicroBatchPlan.for_sizes(batch, micro)
        start = 0
        for size, weight in zip(plan.sizes(), plan.loss_weights(), strict=True):
            stop = start + size
            with self._autocast():
                outputs = model(inputs[start:stop])
                loss = self.task.loss(outputs, targets[start:stop]) * weight
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            start = stop
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _evaluate(
        self, model: nn.Module, val_idx: np.ndarray, micro: int
    ) -> tuple[float, dict[str, float]]:
        model.eval()
        outputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        for inputs, target in self._batches(val_idx, max(micro * 4, 64), False, 0):
            with self._autocast():
                outputs.append(model(inputs).float())
            targets.append(target)
        metrics = self.task.score(torch.cat(outputs), torch.cat(targets))
        metric = self.spec.objective.metric
        if metric not in metrics:
            raise KeyError(
                f"spec.objective.metric: the task returned no metric {metric!r} "
                f"(it returned: {', '.join(sorted(metrics))})"
            )
        return float(metrics[metric]), metrics


@dataclass
class _Clock:
    step: float = 0.0  # forward, backward and optimizer steps
    train: float = 0.0  # the training loop: steps plus waiting for batches
    eval: float = 0.0


class _EarlyStopper:
    def __init__(self, spec: StudySpec) -> None:
        es = spec.training.early_stopping
        self.patience = es.patience if es else None
        self.min_delta = parse_number(es.min_delta) if es else 0.0
        self.maximize = spec.objective.direction == "Maximize"
        self.best: float | None = None
        self.bad = 0

    def should_stop(self, score: float) -> bool:
        if self.patience is None:
            return False
        improved = self.best is None or (
            score > self.best + self.min_delta
            if self.maximize
            else score < self.best - self.min_delta
        )
        if improved:
            self.best = score
            self.bad = 0
            return False
        self.bad += 1
        return self.bad >= self.patience


def _pick_device(spec: StudySpec) -> torch.device:
    if spec.resources.accelerator != "CPU" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _compiled(model: nn.Module) -> nn.Module:
    # Dynamo's in-process cache (keyed on code and guards) and inductor's on-disk cache are
    # reused by every later trial of this process, so only the first trial pays for compiling.
    compiled: nn.Module = torch.compile(model, dynamic=True)  # type: ignore[assignment]
    return compiled
