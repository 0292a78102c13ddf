"""The warm training engine: data and loaders once per process, many trials after that.

:class:`Engine` (:mod:`._engine`) is created once per runner process. It loads the task's data,
splits it into folds and builds its loaders once (:mod:`._data`) and plans memory once
(:class:`trial_runner.memory.TrialPlanner`); :meth:`Engine.run_trial` then trains one
configuration: K folds (:mod:`._fold`), each with early stopping and a validation cadence,
effective batches reached by gradient accumulation over memory-safe micro-batches
(:func:`trial_runner.step.train_step`), validation at the largest batch that fits,
intermediate reports for the pruner, OOM recovery at half the micro-batch, and per-trial
telemetry (a trial's state as its folds run: :mod:`._trial`). A preempted trial resumes at
its next fold (:mod:`._resume`).
"""

from __future__ import annotations

from trial_runner.engine._data import FoldedData, make_folds
from trial_runner.engine._engine import Engine, TrialResult, epochs_for_trial
from trial_runner.engine._fold import Interrupted, StopReason
from trial_runner.engine._resume import FoldRecord, folds_from_attr, folds_to_attr
from trial_runner.engine._trial import Reporter, VectorReporter
from trial_runner.step import is_out_of_memory

__all__ = [
    "Engine",
    "FoldRecord",
    "FoldedData",
    "Interrupted",
    "Reporter",
    "StopReason",
    "TrialResult",
    "VectorReporter",
    "epochs_for_trial",
    "folds_from_attr",
    "folds_to_attr",
    "is_out_of_memory",
    "make_folds",
]
