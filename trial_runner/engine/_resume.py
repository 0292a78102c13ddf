"""Finished folds, kept with the trial so that a preempted trial resumes at its next fold.

The runner stores each finished fold's :class:`FoldRecord` in the trial's
:data:`~kubetune_api.contract.FOLDS_ATTR` user attribute as the fold finishes. A retry of a
preempted trial carries its user attributes, so it starts with the records of every fold the
preempted run finished: the engine skips those folds and reports their intermediate values again
(Optuna does not carry intermediate values to a retry), so the pruner sees the same history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from trial_runner.engine._fold import StopReason

__all__ = ["FoldRecord", "folds_from_attr", "folds_to_attr"]

log = logging.getLogger("kubetune.engine")


@dataclass(frozen=True)
class FoldRecord:
    """What a finished fold contributes to its trial (everything but the model)."""

    fold: int
    score: float
    metrics: dict[str, float]
    epochs: int
    stop: StopReason
    #: The intermediate values reported while the fold ran, as ``(step, value)``.
    reports: tuple[tuple[int, float], ...] = field(default=())
    #: With several objectives, the objective vectors reported instead, as ``(step, vector)``.
    vectors: tuple[tuple[int, tuple[float, ...]], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "score": _number(self.score),
            "metrics": {k: _number(v) for k, v in self.metrics.items()},
            "epochs": self.epochs,
            "stop": self.stop,
            "reports": [[step, _number(value)] for step, value in self.reports],
            **(
                {"vectors": [[s, [_number(v) for v in vec]] for s, vec in self.vectors]}
                if self.vectors
                else {}
            ),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FoldRecord:
        stop = raw["stop"]
        if stop not in get_args(StopReason):
            raise ValueError(f"unknown stop reason {stop!r}")
        return cls(
            fold=int(raw["fold"]),
            score=float(raw["score"]),
            metrics={str(k): float(v) for k, v in dict(raw["metrics"]).items()},
            epochs=int(raw["epochs"]),
            stop=stop,
            reports=tuple((int(step), float(value)) for step, value in raw["reports"]),
            vectors=tuple(
                (int(step), tuple(float(v) for v in vector))
                for step, vector in raw.get("vectors", ())
            ),
        )


def folds_to_attr(records: Sequence[FoldRecord]) -> list[dict[str, Any]]:
    """The attribute's value: the records in fold order."""
    return [r.to_json() for r in sorted(records, key=lambda r: r.fold)]


def folds_from_attr(raw: object, folds: int) -> tuple[FoldRecord, ...]:
    """The records an attribute holds, for a trial of ``folds`` folds.

    Only an unbroken run of folds from the first is kept (a resumed trial trains the rest in
    order). A value this version cannot read is ignored with a warning: the trial then trains
    every fold, which costs time but loses nothing.
    """
    if raw is None:
        return ()
    try:
        if not isinstance(raw, list):
            raise TypeError(f"expected a list, got {type(raw).__name__}")
        records = sorted((FoldRecord.from_json(item) for item in raw), key=lambda r: r.fold)
    except (KeyError, TypeError, ValueError) as error:
        log.warning("ignoring the carried folds (%s): training every fold", error)
        return ()
    kept: list[FoldRecord] = []
    for expected, record in enumerate(records):
        if record.fold != expected or record.fold >= folds:
            break
        kept.append(record)
    return tuple(kept)


def _number(value: float) -> float | str:
    # JSON has no NaN or infinity; Optuna stores user attributes as JSON.
    return value if math.isfinite(value) else str(value)
