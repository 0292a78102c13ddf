"""Peak memory: estimate it, and plan batches from it.

* :mod:`.plan`: :class:`TrialPlanner`, the engine's one entry point (a trial's micro-batch
  and validation batch), :class:`MemoryPlanner` (one configuration against one device) and
  the pure search :func:`plan_micro_batch`;
* :mod:`.estimate`: peak of a training step or a validation batch (FakeTensor, Analytic,
  CUDA probe), each running the engine's own step (:mod:`trial_runner.step`);
* :mod:`.measure`: the same steps measured for real on CPU, to check the estimates;
* :mod:`.capacity`: what the device (or the container's cgroup) has free.

``kubetune estimate``, which the operator runs to size pods, is in
:mod:`trial_runner.cli` and builds on these.
"""

from __future__ import annotations

from trial_runner.memory._workload import MemoryEstimate, StepWorkload, sample_batch
from trial_runner.memory.capacity import available_memory
from trial_runner.memory.estimate import estimate_peak, estimate_training_peak
from trial_runner.memory.measure import measure_peak
from trial_runner.memory.plan import (
    MemoryPlanner,
    NoMicroBatchFits,
    TrialBatches,
    TrialPlanner,
    effective_batch_size,
    largest_configuration,
    plan_micro_batch,
)
from trial_runner.step import MicroBatchPlan, resolve_precision

__all__ = [
    "MemoryEstimate",
    "MemoryPlanner",
    "MicroBatchPlan",
    "NoMicroBatchFits",
    "StepWorkload",
    "TrialBatches",
    "TrialPlanner",
    "available_memory",
    "effective_batch_size",
    "estimate_peak",
    "estimate_training_peak",
    "largest_configuration",
    "measure_peak",
    "plan_micro_batch",
    "resolve_precision",
    "sample_batch",
]
