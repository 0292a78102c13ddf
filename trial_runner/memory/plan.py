"""Batch sizes from memory estimates: micro-batches for training, one batch for validation.

:class:`TrialPlanner` is the one entry point the engine plans through. Once per process it
estimates the largest configuration of the search space (:func:`largest_configuration`): if
that fits the device at its full effective batch (training) and at the whole validation split
(validation), so does every configuration and trials skip estimating. Otherwise each trial is
planned from estimates of its own configuration by a :class:`MemoryPlanner`: the largest
micro-batch whose training step fits (the effective batch is then reached by accumulation),
and the largest validation batch that fits, which needs no gradients or optimizer state and
so is usually much larger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from trial_runner.memory._workload import MemoryEstimate, StepWorkload
from trial_runner.memory.capacity import available_memory
from trial_runner.memory.estimate import estimate_peak
from trial_runner.step import MicroBatchPlan, resolve_precision

if TYPE_CHECKING:
    import torch

    from kubetune_api.spec import StudySpec
    from trial_runner.task import Task

__all__ = [
    "MemoryPlanner",
    "NoMicroBatchFits",
    "TrialBatches",
    "TrialPlanner",
    "effective_batch_size",
    "largest_configuration",
    "plan_micro_batch",
]

log = logging.getLogger("kubetune.memory")


class NoMicroBatchFits(MemoryError):
    """Not even a micro-batch of one sample fits the memory available."""


def plan_micro_batch(
    effective_batch: int, fits: Callable[[int], bool], *, max_micro_batch: int | None
) -> MicroBatchPlan:
    """The largest micro-batch that fits, and the accumulation that reaches ``effective_batch``.

    ``fits`` must be monotone (if a micro-batch fits, every smaller one does). It is first
    asked about the upper bound ``min(effective_batch, max_micro_batch)``; when that does not
    fit, a binary search over powers of two finds the largest power of two that fits, then a
    binary search between it and the next power of two finds the exact largest size.
    Raises :class:`NoMicroBatchFits` when a micro-batch of 1 does not fit.
    """
    if effective_batch < 1:
        raise ValueError(f"effective batch must be positive (got {effective_batch})")
    if max_micro_batch is not None and max_micro_batch < 1:
        raise ValueError(f"max micro-batch must be positive (got {max_micro_batch})")
    upper = min(effective_batch, max_micro_batch or effective_batch)
    if fits(upper):
        return MicroBatchPlan.for_sizes(effective_batch, upper)
    if upper == 1 or not fits(1):
        raise NoMicroBatchFits(f"a micro-batch of 1 sample does not fit (upper bound {upper})")
    # Largest k with 2**k < upper that fits; 2**0 fits, 2**top >= upper does not.
    lo_exp, hi_exp = 0, max(1, (upper - 1).bit_length())
    while hi_exp - lo_exp > 1:
        mid = (lo_exp + hi_exp) // 2
        if fits(2**mid):
            lo_exp = mid
        else:
            hi_exp = mid
    lo, hi = 2**lo_exp, min(2**hi_exp, upper)  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return MicroBatchPlan.for_sizes(effective_batch, lo)


def largest_configuration(spec: StudySpec) -> dict[str, Any]:
    """The configuration of the search space that needs the most memory.

    Assumes memory grows with every numeric parameter (widths, depths, batch sizes): Int and
    Float take their ``high``, a Categorical its largest numeric choice (its first choice when
    none is numeric). A parameter whose group no stage searches keeps its ``default``.
    Parameters the search space does not name are left out, so the task's own defaults apply.
    """
    searched: set[str] | None = None
    if spec.stages:
        searched = {group for stage in spec.stages for group in stage.groups}
    config: dict[str, Any] = {}
    for p in spec.search_space:
        if searched is not None and p.group not in searched and p.default is not None:
            config[p.name] = p.typed(p.default)
        elif p.type == "Categorical":
            choices = p.choices or []
            numeric = [c for c in choices if _numeric(c) is not None]
            config[p.name] = (
                max(numeric, key=lambda c: _numeric(c) or 0.0) if numeric else choices[0]
            )
        else:
            assert p.high is not None
            config[p.name] = p.typed(p.high)
    # Conditional parameters the chosen values leave inactive are absent, as in a trial.
    return spec.active_params(config)


def _numeric(value: int | str) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value)
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def effective_batch_size(spec: StudySpec, config: Mapping[str, Any]) -> int:
    """Samples per optimizer step: the batch-size parameter, else ``effectiveBatchSize``,
    else 32."""
    value = config.get(spec.training.batch_size_parameter)
    if value is not None:
        return int(value)
    if spec.training.effective_batch_size is not None:
        return spec.training.effective_batch_size
    return 32


class MemoryPlanner:
    """Plans one configuration's batches from estimates against one device's capacity.

    A batch fits when its estimated peak plus ``headroom`` (a fraction) is at most the
    capacity: ``capacity_bytes`` when given, else the device's available memory, measured at
    each question. Estimates are cached per configuration, batch and accumulation.
    """

    def __init__(
        self,
        task: Task,
        sample: tuple[torch.Tensor, torch.Tensor],
        *,
        precision: str,
        device: torch.device,
        headroom: float,
        fused: bool | None = None,
        capacity_bytes: int | None = None,
    ) -> None:
        self.task = task
        self.sample = sample
        self.precision = resolve_precision(precision, device)
        self.device = device
        self.headroom = headroom
        self.fused = fused
        self.capacity_bytes = capacity_bytes
        self._estimates: dict[tuple[str, int, int, int, bool], MemoryEstimate] = {}

    @classmethod
    def for_spec(
        cls,
        spec: StudySpec,
        task: Task,
        sample: tuple[torch.Tensor, torch.Tensor],
        device: torch.device,
        capacity_bytes: int | None = None,
    ) -> MemoryPlanner:
        """A planner with the spec's precision, optimizer and headroom on ``device``."""
        return cls(
            task,
            sample,
            precision=spec.training.precision,
            device=device,
            headroom=spec.resources.headroom_fraction,
            fused=spec.training.fused_optimizer and device.type == "cuda",
            capacity_bytes=capacity_bytes,
        )

    def capacity(self) -> int:
        if self.capacity_bytes is not None:
            return self.capacity_bytes
        return available_memory(self.device)

    def fits(self, estimate: MemoryEstimate) -> bool:
        return estimate.peak_bytes * (1 + self.headroom) <= self.capacity()

    def estimate(
        self,
        params: Mapping[str, Any],
        batch: int,
        *,
        accumulation_steps: int = 1,
        training: bool = True,
        kept_rows: int = 0,
    ) -> MemoryEstimate:
        """The estimated peak of a training step (or a validation batch) of ``params``."""
        key = (repr(sorted(params.items())), batch, accumulation_steps, kept_rows, training)
        if key not in self._estimates:
            workload = StepWorkload(
                self.task,
                params,
                batch,
                *self.sample,
                self.precision,
                self.device,
                accumulation_steps=accumulation_steps,
                fused=self.fused,
                training=training,
                kept_rows=kept_rows,
            )
            self._estimates[key] = estimate_peak(workload)
        return self._estimates[key]

    def plan_training(
        self, params: Mapping[str, Any], effective: int, *, max_micro_batch: int | None = None
    ) -> tuple[MicroBatchPlan, MemoryEstimate]:
        """The largest micro-batch whose training step fits, and its estimate.

        The common case (the whole effective batch fits) costs one estimate. Raises
        :class:`NoMicroBatchFits` when not even one sample fits.
        """

        def estimate(micro: int) -> MemoryEstimate:
            steps = MicroBatchPlan.for_sizes(effective, micro).accumulation_steps
            return self.estimate(params, micro, accumulation_steps=steps)

        plan = plan_micro_batch(
            effective, lambda micro: self.fits(estimate(micro)), max_micro_batch=max_micro_batch
        )
        return plan, estimate(plan.micro_batch)

    def plan_validation(self, params: Mapping[str, Any], rows: int) -> tuple[int, MemoryEstimate]:
        """The largest validation batch (at most ``rows``, the split) that fits, and its
        estimate. Raises :class:`NoMicroBatchFits` when not even one sample fits."""

        def estimate(batch: int) -> MemoryEstimate:
            return self.estimate(params, batch, training=False, kept_rows=rows - batch)

        plan = plan_micro_batch(
            rows, lambda batch: self.fits(estimate(batch)), max_micro_batch=None
        )
        return plan.micro_batch, estimate(plan.micro_batch)


@dataclass(frozen=True)
class TrialBatches:
    """The batch sizes of one trial and the estimate behind them."""

    micro_batch: int
    validation_batch: int
    estimated_peak_bytes: int | None  # the training step's, when it was estimated


class TrialPlanner:
    """The engine's planner: a trial's micro-batch and validation batch (module docstring)."""

    def __init__(
        self,
        spec: StudySpec,
        memory: MemoryPlanner,
        *,
        validation_rows: int,
    ) -> None:
        self.spec = spec
        self.memory = memory
        self.validation_rows = max(1, validation_rows)
        self._training_fits_all, self._largest_peak = self._check_training()
        self._validation = self._check_validation()

    def plan_trial(
        self, params: Mapping[str, Any], effective: int, *, max_micro_batch: int | None = None
    ) -> TrialBatches:
        """Batches for ``params`` at ``effective`` samples per optimizer step.

        ``max_micro_batch`` caps the micro-batch (the engine passes what ran after an OOM).
        When not even one sample fits, the micro-batch is 1 and the engine's OOM handling
        decides (retry, then prune).
        """
        upper = min(effective, self.spec.training.max_micro_batch or effective)
        upper = min(upper, max_micro_batch or upper)
        micro, peak = upper, self._largest_peak
        if not self._training_fits_all and peak is not None:
            try:
                plan, estimate = self.memory.plan_training(params, effective, max_micro_batch=upper)
                micro, peak = plan.micro_batch, estimate.peak_bytes
            except NoMicroBatchFits:
                micro, peak = 1, None
        return TrialBatches(micro, self._validation_batch(params, micro), peak)

    def _validation_batch(self, params: Mapping[str, Any], micro: int) -> int:
        rows = self.validation_rows
        if self._validation == "Whole":
            return rows
        if self._validation == "Plan":
            try:
                return self.memory.plan_validation(params, rows)[0]
            except NoMicroBatchFits:
                return 1
            except Exception as exc:
                log.warning("validation estimate failed (%s)", exc)
        # Estimates are advisory: without one, a fixed multiple of the micro-batch.
        return min(rows, max(4 * micro, 64))

    def _check_training(self) -> tuple[bool, int | None]:
        """(every configuration fits at its full batch, the largest one's peak)."""
        config = largest_configuration(self.spec)
        effective = effective_batch_size(self.spec, config)
        upper = min(effective, self.spec.training.max_micro_batch or effective)
        try:
            plan, estimate = self.memory.plan_training(config, effective, max_micro_batch=upper)
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

    def _check_validation(self) -> Literal["Whole", "Plan", "Fixed"]:
        """Whether every configuration validates the whole split in one batch ("Whole"),
        each trial's batch is planned ("Plan"), or estimates fail ("Fixed")."""
        config = largest_configuration(self.spec)
        try:
            estimate = self.memory.estimate(config, self.validation_rows, training=False)
        except Exception as exc:  # advisory, as for training
            log.warning("validation estimate failed (%s); using a fixed validation batch", exc)
            return "Fixed"
        if self.memory.fits(estimate):
            log.info("validation: the whole split (%d) in one batch", self.validation_rows)
            return "Whole"
        log.info("validation: planning each trial's batch")
        return "Plan"
