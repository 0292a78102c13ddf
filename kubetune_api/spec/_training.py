"""What a trial runs: the task, and how it is trained (epochs, folds, precision, early
stopping, checkpoints, profiling)."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field

from kubetune_api.spec._base import ENTRYPOINT_PATTERN, PARAM_NAME_PATTERN, Number, SpecModel
from kubetune_api.spec._parse import parse_number


class TaskSpec(SpecModel):
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="module:attribute of the task class, importable inside the runner image.",
    )
    image: str | None = Field(
        default=None, description="Runner image for the cluster; unused by local runs."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Free-form settings passed to the task unchanged."
    )


class EarlyStopping(SpecModel):
    patience: int = Field(ge=1)
    min_delta: Number = "0"

    @cached_property
    def min_delta_value(self) -> float:
        return parse_number(self.min_delta)


class EpochScheduleEntry(SpecModel):
    from_trial: int = Field(ge=0, description="First trial number this entry applies to.")
    epochs: int = Field(ge=1, le=100000)


class Checkpoint(SpecModel):
    directory: str = Field(min_length=1, description="Where the best trial's weights are kept.")


class Profile(SpecModel):
    """Which trials write a ``torch.profiler`` trace (Chrome/Perfetto JSON), and where."""

    trials: Literal["First", "EveryN"] = Field(
        default="First",
        description="First: the first trial of each runner process (where warm-up shows). "
        "EveryN: the trials whose number is a multiple of every.",
    )
    every: int | None = Field(
        default=None,
        ge=2,
        le=100000,
        description="EveryN only: profile trials 0, every, 2 x every, ... (at most "
        "maxTrials / every traces).",
    )
    directory: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Where traces are written. Default: profiles/ beside "
        "training.checkpoint.directory, else kubetune-profiles/<study> in the runner's "
        "temporary directory (/tmp in a pod).",
    )


class Training(SpecModel):
    epochs: int = Field(default=10, ge=1, le=100000)
    epoch_schedule: list[EpochScheduleEntry] | None = Field(
        default=None,
        max_length=64,
        description="Epochs by trial number; overrides epochs where it applies.",
    )
    folds: int = Field(default=1, ge=1, le=50, description="k-fold CV; 1 means a holdout split.")
    report_every: Literal["Auto", "Fold", "Epoch"] = Field(
        default="Auto",
        description="Report intermediate values to the pruner per fold or epoch. Auto: per "
        "epoch when a stepwise pruner (Median, Percentile, Hyperband, SuccessiveHalving) "
        "prunes fewer than 5 folds of more than one epoch, else per fold.",
    )
    validation_every: int = Field(default=1, ge=1, description="Validate every N epochs.")
    early_stopping: EarlyStopping | None = None
    precision: Literal["Auto", "BF16", "FP16", "FP32"] = Field(
        default="Auto",
        description="Auto: BF16 autocast on GPUs that support it, FP32 on CPUs (where BF16 is "
        "usually slower without native support); BF16 forces autocast on CPU too.",
    )
    tf32: bool = True
    cudnn_benchmark: bool = True
    fused_optimizer: bool = True
    pin_memory: bool = True
    compile: bool = False
    effective_batch_size: int | None = Field(
        default=None, ge=1, description="Batch per optimizer step when not searched."
    )
    batch_size_parameter: str = Field(
        default="batch_size",
        pattern=PARAM_NAME_PATTERN,
        max_length=63,
        description="Search-space parameter holding the effective batch size, if present.",
    )
    max_micro_batch: int | None = Field(
        default=None, ge=1, description="Upper bound on the micro-batch (memory cap)."
    )
    data_loader_workers: int = Field(default=0, ge=0, le=64)
    checkpoint: Checkpoint | None = None
    profile: Profile | None = Field(
        default=None, description="Write torch.profiler traces of some trials."
    )


def device_precision(requested: str, native_bf16: bool) -> str:
    """The precision a device trains at for ``training.precision`` ``requested``: ``Auto`` is
    BF16 where the device computes bfloat16 natively (a CUDA GPU of compute capability 8.0 or
    newer), else FP32; the others as stated. The runner resolves it on its device, the operator
    for the GPUs it sizes."""
    if requested == "Auto":
        return "BF16" if native_bf16 else "FP32"
    return requested
