"""What an estimate measures: one configuration's steps at one batch size, as a trial runs them.

A :class:`StepWorkload` names the task, the parameters, the batch, the precision and the
device once; every estimator (FakeTensor, Analytic, the CUDA probe) and the CPU measurement
build their model, optimizer and batches through it and run :meth:`StepWorkload.run`, which
calls :func:`trial_runner.step.train_step` (training) or :func:`trial_runner.step.eval_forward`
(validation), the functions the engine trains and validates with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from trial_runner import step

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trial_runner.task import Task, TaskData

__all__ = [
    "MemoryEstimate",
    "Method",
    "StepWorkload",
    "first_line",
    "mib",
    "optimizer_tensors",
    "repeat_rows",
    "sample_batch",
    "storage_bytes",
]

Method = Literal["FakeTensor", "Analytic", "Probe"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of a training step (or a validation batch) and how they were obtained."""

    peak_bytes: int
    method: Method
    detail: str


@dataclass(frozen=True)
class StepWorkload:
    """One configuration's steps at one batch size, as the engine runs them.

    Training (``training=True``) is two optimizer steps, because the optimizer state only
    exists from the end of the first one: the steady-state peak (the second step, with the
    state live while activations and gradients are) is the higher one for activation-heavy
    models. When the plan accumulates (``accumulation_steps > 1``) the second step runs two
    micro-batches, so gradients are live during a forward.

    Validation (``training=False``) is one forward of ``micro_batch`` samples without
    gradients, with the optimizer's state on the device (the engine validates between training
    epochs, AdamW's two moments still allocated); ``kept_rows`` are the other samples of the
    validation split, whose outputs the engine keeps for scoring.
    """

    task: Task
    params: Mapping[str, Any]
    micro_batch: int
    sample_input: torch.Tensor
    sample_target: torch.Tensor
    precision: str
    device: torch.device
    accumulation_steps: int = 1
    fused: bool | None = None
    training: bool = True
    kept_rows: int = 0

    def __post_init__(self) -> None:
        if self.micro_batch < 1:
            raise ValueError(f"micro-batch must be positive (got {self.micro_batch})")

    def at(self, micro_batch: int, accumulation_steps: int | None = None) -> StepWorkload:
        """The same workload at another batch size."""
        steps = self.accumulation_steps if accumulation_steps is None else accumulation_steps
        return replace(self, micro_batch=micro_batch, accumulation_steps=steps)

    def on(self, device: torch.device) -> StepWorkload:
        """The same workload on another device."""
        return replace(self, device=device)

    @property
    def kind(self) -> str:
        """What ``micro_batch`` is, for messages."""
        return "micro-batch" if self.training else "validation batch"

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """The task's optimizer for ``model`` with the engine's flags (validation too: its state
        is on the device while the engine validates)."""
        fused, foreach = step.optimizer_flags(self.device, self.fused)
        return self.task.build_optimizer(model, self.params, fused=fused, foreach=foreach)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """Before the steps are measured. Validation: the optimizer's state as after a training
        step, with no gradients left (what is on the device while the engine validates), so the
        measurement counts it as resident and not the step that made it. Training: nothing."""
        if not self.training and optimizer is not None:
            _materialize_state(model, optimizer)

    def micro_batches(
        self, make: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> list[step.MicroBatch]:
        """The distinct micro-batches the steps use, each made by ``make(sample, rows)``."""
        count = 2 if self.training and self.accumulation_steps > 1 else 1
        return [
            (make(self.sample_input, self.micro_batch), make(self.sample_target, self.micro_batch))
            for _ in range(count)
        ]

    def row_bytes(self) -> int:
        """Bytes of one sample's input and target."""
        return sum(
            int(t[:1].numel()) * t.element_size() for t in (self.sample_input, self.sample_target)
        )

    def run(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        batches: Sequence[step.MicroBatch],
        *,
        scaler: torch.amp.GradScaler | None = None,
        before_forward: Callable[[], None] | None = None,
    ) -> int:
        """Run the steps; returns the bytes of outputs kept for scoring beyond this batch.

        ``before_forward`` is called before every forward but the first.
        """
        if not self.training:
            outputs = step.eval_forward(
                model, batches[0][0], precision=self.precision, device=self.device
            )
            per_row = outputs.untyped_storage().nbytes() / max(1, int(outputs.shape[0]))
            return int(per_row * self.kept_rows)
        assert optimizer is not None
        common: dict[str, Any] = dict(precision=self.precision, device=self.device, scaler=scaler)
        step.train_step(self.task.loss, model, optimizer, batches[:1], **common)
        second = [*batches[1:], *batches[:1]] if self.accumulation_steps > 1 else batches[:1]
        step.train_step(
            self.task.loss, model, optimizer, second, before_forward=before_forward, **common
        )
        return 0


def sample_batch(data: TaskData, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``rows`` samples of a task's data as an ``(inputs, targets)`` pair."""
    import torch

    if isinstance(data.inputs, torch.Tensor):
        if data.targets is None:
            raise ValueError("task data has tensor inputs but no targets")
        n = min(rows, int(data.inputs.shape[0]))
        return data.inputs[:n], data.targets[:n]
    items = [data.inputs[i] for i in range(min(rows, len(data)))]
    if not items:
        raise ValueError("task data is empty")
    return (
        torch.stack([torch.as_tensor(x) for x, _ in items]),
        torch.stack([torch.as_tensor(y) for _, y in items]),
    )


def repeat_rows(sample: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows made of the sample's rows, repeated as needed."""
    import torch

    index = torch.arange(count) % int(sample.shape[0])
    return sample[index]


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> Iterator[torch.Tensor]:
    """The tensors of an optimizer's state (moments, step counters)."""
    import torch

    if optimizer is None:
        return
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def mib(value: int) -> str:
    return f"{value / 2**20:.2f} MiB"


def _materialize_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's state as after a training step, with no gradients left: what is on the
    device while the engine validates (a step on zero gradients)."""
    import torch

    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
