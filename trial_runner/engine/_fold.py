"""One fold of one trial: build the model, train epochs of steps, validate, stop early.

Training goes through :func:`trial_runner.step.train_step` and validation through
:func:`trial_runner.step.eval_forward`, the functions the memory planner estimated.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from kubetune_api.spec import StudySpec
from trial_runner import step
from trial_runner.engine._data import FoldedData
from trial_runner.task import Task

__all__ = [
    "Clock",
    "FoldOutcome",
    "FoldTrainer",
    "Interrupted",
    "OutOfMemory",
    "StopReason",
]

StopReason = Literal["Completed", "EarlyStopped", "Pruned", "OutOfMemory"]

log = logging.getLogger("kubetune.engine")


class Interrupted(Exception):
    """The runner was asked to stop (SIGTERM) in the middle of a trial."""


class OutOfMemory(Exception):
    """A fold ran out of memory (the original error is dropped with its tensors)."""


@dataclass
class Clock:
    step: float = 0.0  # forward, backward and optimizer steps
    train: float = 0.0  # the training loop: steps plus waiting for batches
    eval: float = 0.0


@dataclass(frozen=True)
class FoldOutcome:
    model: nn.Module
    score: float
    metrics: dict[str, float]
    epochs_run: int
    stop: StopReason


class _EarlyStopper:
    """Stops after ``patience`` validations without an improvement above ``minDelta``."""

    def __init__(self, spec: StudySpec) -> None:
        es = spec.training.early_stopping
        self.objective = spec.primary_objective
        self.patience = es.patience if es else None
        self.min_delta = es.min_delta_value if es else 0.0
        self.best: float | None = None
        self.bad = 0

    def should_stop(self, score: float) -> bool:
        if self.patience is None:
            return False
        if self.best is None or self.objective.better(score, self.best, self.min_delta):
            self.best = score
            self.bad = 0
            return False
        self.bad += 1
        return self.bad >= self.patience


class FoldTrainer:
    """Trains folds of one study's trials on one device (created once per process)."""

    def __init__(
        self,
        task: Task,
        spec: StudySpec,
        data: FoldedData,
        *,
        precision: str,
        stop_requested: threading.Event,
    ) -> None:
        self.task = task
        self.spec = spec
        self.data = data
        self.device = data.device
        self.precision = precision
        self.stop_requested = stop_requested
        #: The validation batch that last ran after an out-of-memory error in validation: the
        #: trial's later validations start there (the engine clears it for each trial).
        self.validation_cap: int | None = None

    @property
    def fused(self) -> bool:
        return self.spec.training.fused_optimizer and self.device.type == "cuda"

    def train(
        self,
        params: Mapping[str, Any],
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        effective: int,
        micro: int,
        validation_batch: int,
        epochs: int,
        seed: int,
        clock: Clock,
        report: Callable[[float, dict[str, float], int], bool] | None,
        on_step: Callable[[float], None] = lambda started: None,
    ) -> FoldOutcome:
        """Train one fold; raises :class:`OutOfMemory` or :class:`Interrupted`.

        ``on_step`` is called after each training and validation step with the
        ``time.perf_counter()`` at which the step started; what it raises ends the fold.
        """
        model, optimizer = self._build(params, seed)
        scaler = step.grad_scaler(self.precision, self.device)
        stopper = _EarlyStopper(self.spec)
        best: tuple[float, dict[str, float]] | None = None
        last: tuple[float, dict[str, float]] = (float("nan"), {})
        epochs_run = 0
        stop: StopReason = "Completed"
        cadence = self.spec.training.validation_every
        for epoch in range(epochs):
            if self.stop_requested.is_set():
                raise Interrupted
            self._train_epoch(
                model,
                optimizer,
                scaler,
                train_idx,
                effective=effective,
                micro=micro,
                seed=seed * 997 + epoch,
                clock=clock,
                on_step=on_step,
            )
            epochs_run += 1
            if (epoch + 1) % cadence and epoch != epochs - 1:
                continue
            started = time.perf_counter()
            last = self._evaluate(model, val_idx, validation_batch, on_step)
            clock.eval += time.perf_counter() - started
            if best is None or self.spec.primary_objective.better(last[0], best[0]):
                best = last
            if report is not None and report(*last, epoch):
                stop = "Pruned"
                break
            if stopper.should_stop(last[0]):
                stop = "EarlyStopped"
                break
        # The fold's score is its best validated epoch when early stopping restores the best,
        # otherwise the final one; with several objectives, the epoch the first objective
        # prefers, and every metric of that epoch.
        score, metrics = best if self.spec.training.early_stopping and best else last
        return FoldOutcome(model, score, metrics, epochs_run, stop)

    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: Any,
        scaler: Any,
        train_idx: np.ndarray,
        *,
        effective: int,
        micro: int,
        seed: int,
        clock: Clock,
        on_step: Callable[[float], None],
    ) -> None:
        """One epoch's training steps; raises :class:`OutOfMemory` or :class:`Interrupted`."""
        model.train()
        started = time.perf_counter()
        try:
            for inputs, targets in self.data.batches(train_idx, effective, True, seed):
                step_started = time.perf_counter()
                step.train_step(
                    self.task.loss,
                    model,
                    optimizer,
                    step.split_batch(inputs, targets, micro),
                    precision=self.precision,
                    device=self.device,
                    scaler=scaler,
                )
                clock.step += time.perf_counter() - step_started
                on_step(step_started)
                if self.stop_requested.is_set():
                    raise Interrupted
        except Interrupted:
            raise
        except Exception as exc:
            if step.is_out_of_memory(exc):
                raise OutOfMemory from None
            raise
        finally:
            clock.train += time.perf_counter() - started

    def _forward(
        self, model: nn.Module, val_idx: np.ndarray, batch: int, on_step: Callable[[float], None]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The validation split's outputs and targets, ``batch`` rows per forward."""
        outputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        for inputs, target in self.data.batches(val_idx, batch, False, 0):
            step_started = time.perf_counter()
            outputs.append(
                step.eval_forward(model, inputs, precision=self.precision, device=self.device)
            )
            targets.append(target)
            on_step(step_started)
        return outputs, targets

    def _build(self, params: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        """The fold's model and optimizer; raises :class:`OutOfMemory` if they do not fit."""
        try:
            return self._build_model(params, seed)
        except Exception as exc:
            if step.is_out_of_memory(exc):
                raise OutOfMemory from None
            raise

    def _build_model(self, params: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = self.task.build_model(params).to(self.device)
        fused, foreach = step.optimizer_flags(self.device, self.fused)
        optimizer = self.task.build_optimizer(model, params, fused=fused, foreach=foreach)
        if self.spec.training.compile:
            model = _compiled(model)
        return model, optimizer

    def _evaluate(
        self,
        model: nn.Module,
        val_idx: np.ndarray,
        batch: int,
        on_step: Callable[[float], None],
    ) -> tuple[float, dict[str, float]]:
        model.eval()
        batch = min(batch, self.validation_cap or batch)
        while True:
            out_of_memory = False
            try:
                outputs, targets = self._forward(model, val_idx, batch, on_step)
            except Exception as exc:
                if not step.is_out_of_memory(exc):
                    raise
                out_of_memory = True
            if not out_of_memory:
                break
            # Freed outside the except block: its traceback holds the batch's activations.
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch <= 1:
                raise OutOfMemory
            batch = self.validation_cap = batch // 2
            log.warning("out of memory in validation: retrying with validation batch %d", batch)
        metrics = {
            **self.task.score(torch.cat(outputs), torch.cat(targets)),
            **self.task.model_metrics(model),
        }
        spec = self.spec
        for i, objective in enumerate(spec.all_objectives):
            if objective.metric not in metrics:
                field = f"objectives[{i}]" if spec.multi_objective else "objective"
                raise KeyError(
                    f"spec.{field}.metric: the task returned no metric {objective.metric!r} "
                    f"(it returned: {', '.join(sorted(metrics))})"
                )
        for i, constraint in enumerate(spec.constraints or ()):
            if constraint.metric not in metrics:
                raise KeyError(
                    f"spec.constraints[{i}].metric: the task returned no metric "
                    f"{constraint.metric!r} (it returned: {', '.join(sorted(metrics))})"
                )
        return float(metrics[spec.primary_objective.metric]), metrics


def _compiled(model: nn.Module) -> nn.Module:
    # Dynamo's in-process cache (keyed on code and guards) and inductor's on-disk cache are
    # reused by later trials of this process with the same parameter shapes; a new width (or
    # train/eval mode) compiles again, and past Dynamo's recompile limit the model runs eagerly.
    # The engine records which (telemetry ``compile`` and ``compile_graphs``).
    compiled: nn.Module = torch.compile(model, dynamic=True)  # type: ignore[assignment]
    return compiled
