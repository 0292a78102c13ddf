"""The pruning schedule a spec leaves to kubetune: report cadence and halving resources.

Pure rules from the training schedule (folds × epochs) and the pruner type, documented in
docs/spec.md ("Pruning defaults") and measured by ``bench/pruning.py``:

* ``training.reportEvery: Auto`` (the default) reports per ``Epoch`` when the pruner compares
  steps (Median, Percentile, Hyperband, SuccessiveHalving), the study has fewer than
  :data:`FEW_FOLDS` folds and a fold trains more than one epoch: a fold is then a fifth of a
  trial or more, too coarse a unit to stop a bad trial early. Otherwise per ``Fold`` (with
  ``Nop`` nothing reads the steps and fold reports write fewer intermediate values; Wilcoxon
  always compares folds; with many folds the running mean over folds is the steadier signal).
* Hyperband and SuccessiveHalving without ``reductionFactor`` halve by
  :data:`REDUCTION_FACTOR` (3, the Hyperband paper's and Optuna's); without ``minResource``
  the first rung comes after about a ``1/reductionFactor²`` share of a trial's steps (at
  least one step), so the most aggressive bracket's rungs are at about 1/9, 1/3 and nearly
  all of a trial and Hyperband keeps at most three brackets whatever the schedule's length (Optuna's
  Hyperband samples each bracket from its own trials only: more brackets would starve the
  sampler of a small budget).
"""

from __future__ import annotations

from typing import Literal

from kubetune_api.spec import StudySpec

__all__ = [
    "FEW_FOLDS",
    "REDUCTION_FACTOR",
    "describe",
    "halving_resources",
    "max_epochs",
    "report_every",
]

#: ``reportEvery: Auto`` reports per epoch below this many folds.
FEW_FOLDS = 5
#: The reduction factor of Hyperband and SuccessiveHalving when the spec gives none.
REDUCTION_FACTOR = 3
#: Pruners that compare trials step by step (and so gain from per-epoch steps).
_STEPWISE = ("Median", "Percentile", "Hyperband", "SuccessiveHalving")


def max_epochs(spec: StudySpec) -> int:
    """The largest epoch count of any trial: ``training.epochs`` or an ``epochSchedule`` entry."""
    training = spec.training
    return max([training.epochs] + [e.epochs for e in training.epoch_schedule or []])


def report_every(spec: StudySpec) -> Literal["Fold", "Epoch"]:
    """The cadence the trials report at: ``training.reportEvery``, with ``Auto`` resolved."""
    given = spec.training.report_every
    if given != "Auto":
        return given
    few_folds = spec.training.folds < FEW_FOLDS
    if spec.pruner.type in _STEPWISE and few_folds and max_epochs(spec) > 1:
        return "Epoch"
    return "Fold"


def halving_resources(
    steps: int, min_resource: int | None, reduction_factor: int | None
) -> tuple[int, int]:
    """``(minResource, reductionFactor)`` of Hyperband or SuccessiveHalving over ``steps``
    steps per trial: the given values, or the defaults of the module's rule."""
    eta = REDUCTION_FACTOR if reduction_factor is None else reduction_factor
    if min_resource is None:
        min_resource = max(1, steps // eta**2)
    return min_resource, eta


def describe(spec: StudySpec, steps: int) -> str:
    """One line `kubetune run` prints: the pruner, its resources and the steps it sees."""
    p = spec.pruner
    cadence = report_every(spec)
    unit = "fold" if cadence == "Fold" or p.type == "Wilcoxon" else "epoch"
    line = f"pruner {p.type} over {steps} {unit} steps a trial"
    if p.type in ("Hyperband", "SuccessiveHalving"):
        min_resource, eta = halving_resources(steps, p.min_resource, p.reduction_factor)
        line += f", minResource {min_resource}, reductionFactor {eta}"
        if p.type == "Hyperband":
            line += f", maxResource {p.max_resource or max(steps, 2)}"
    if spec.training.report_every == "Auto":
        line += f" (reportEvery Auto: {cadence})"
    return line
