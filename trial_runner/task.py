"""The task API: how a user plugs a model and its data into kubetune.

A task class is named by ``spec.task.entrypoint`` (``module:attribute``). The runner creates it
**once per process** with ``spec.task.config`` and calls
[`Task.load_data`][trial_runner.task.Task.load_data] once; then, for every trial, it calls
[`Task.build_model`][trial_runner.task.Task.build_model] (and optionally
[`Task.build_optimizer`][trial_runner.task.Task.build_optimizer]) with that trial's parameters.
Everything else (folds, batching, accumulation, mixed precision, pruning, early stopping,
telemetry) is the runner's job.

The contract:

- ``load_data`` is called once; what it returns is reused by every trial in the process.
  Return tensors when the data is small (they are moved to the device once); return any
  ``torch.utils.data.Dataset`` otherwise (served by one persistent DataLoader).
- ``build_model`` must return a fresh, untrained module for the given parameters.
- ``score`` gets the concatenated outputs and targets of a whole validation split and returns
  named metrics; ``model_metrics`` may add metrics of the trained model itself (its size, its
  speed). ``spec.objective.metric`` (or each of ``spec.objectives``) must be one of the names.
- A task is used by one thread at a time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kubetune_study.outage import first_line
from trial_runner.entrypoints import TaskLoadError, check_entrypoint

__all__ = [
    "Task",
    "TaskData",
    "TaskLoadError",
    "check_entrypoint",
    "load_task",
    "load_task_class",
]


@dataclass
class TaskData:
    """What a task's data looks like to the runner.

    Attributes:
        inputs: Either a tensor of shape ``(N, ...)`` (kept on the device when it fits) or a
            ``Dataset`` yielding ``(input, target)`` pairs.
        targets: Targets, shape ``(N,)`` or ``(N, ...)``. Required with tensor inputs; with a
            Dataset, give class labels here to get stratified folds (or leave ``None``).
        classification: Whether targets are class labels (folds are then stratified).
    """

    inputs: torch.Tensor | Dataset[tuple[torch.Tensor, torch.Tensor]]
    targets: torch.Tensor | None
    classification: bool = True

    def __len__(self) -> int:
        if isinstance(self.inputs, torch.Tensor):
            return int(self.inputs.shape[0])
        return len(self.inputs)  # type: ignore[arg-type]


class Task:
    """Base class for user tasks.

    Override [`load_data`][trial_runner.task.Task.load_data] and
    [`build_model`][trial_runner.task.Task.build_model].
    """

    #: Metric names ``score`` and ``model_metrics`` return, for validating the objectives'
    #: metrics early.
    metrics: tuple[str, ...] = ("accuracy",)

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def load_data(self) -> TaskData:
        """Load the whole data set once per process."""
        raise NotImplementedError

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        """A fresh model for one trial's parameters."""
        raise NotImplementedError

    def build_optimizer(
        self, model: nn.Module, params: Mapping[str, Any], *, fused: bool, foreach: bool
    ) -> torch.optim.Optimizer:
        """AdamW with ``learning_rate`` and ``weight_decay`` from the parameters if present."""
        return torch.optim.AdamW(
            model.parameters(),
            lr=float(params.get("learning_rate", 1e-3)),
            weight_decay=float(params.get("weight_decay", 0.01)),
            fused=fused or None,
            foreach=foreach if not fused else None,
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics over a whole validation split (default: accuracy for classification)."""
        predicted = outputs.argmax(dim=-1)
        return {"accuracy": float((predicted == targets).float().mean().item())}

    def model_metrics(self, model: nn.Module) -> dict[str, float]:
        """Metrics of the trained model rather than of its predictions, such as its parameter
        count, for objectives that trade accuracy against size; merged into ``score``'s after
        each validation. Default: none."""
        return {}


def load_task(entrypoint: str, config: Mapping[str, Any]) -> Task:
    """The task of ``entrypoint``, created with ``config``.

    Raises:
        TaskLoadError: it cannot be imported, or creating it raised (the message names the
            entrypoint and the error in one line; the traceback is chained).
    """
    task_class = load_task_class(entrypoint)
    try:
        return task_class(config)
    except Exception as exc:
        raise TaskLoadError(
            f"spec.task.entrypoint: creating {entrypoint} raised {first_line(exc)}"
        ) from exc


def load_task_class(entrypoint: str) -> type[Task]:
    module_name, _, attribute = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskLoadError(
            f"spec.task.entrypoint: cannot import module {module_name!r} ({exc})"
        ) from None
    except Exception as exc:  # the module itself raised while it was imported
        raise TaskLoadError(
            f"spec.task.entrypoint: importing module {module_name!r} raised {first_line(exc)}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise TaskLoadError(
                f"spec.task.entrypoint: module {module_name!r} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Task)):
        raise TaskLoadError(
            f"spec.task.entrypoint: {entrypoint!r} is not a subclass of trial_runner.task.Task"
        )
    return target
