"""One trial's state while its folds run: its reports, the folds it recorded and why it stops."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from torch import nn

from trial_runner.engine._fold import FoldOutcome, StopReason
from trial_runner.engine._resume import FoldRecord

__all__ = ["Reporter", "TrialRun", "VectorReporter"]


class Reporter(Protocol):
    """What the engine needs from a trial (an ``optuna.Trial`` fits)."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


@runtime_checkable
class VectorReporter(Protocol):
    """What the engine needs from a trial of several objectives: it reports each step's vector
    of its objectives' ``metrics`` (:class:`kubetune_study.mo_pruning.IntermediateVectors`)."""

    metrics: tuple[str, ...]

    def report_vector(self, values: Sequence[float], step: int) -> None: ...

    def should_prune(self) -> bool: ...


@dataclass
class TrialRun:
    """A trial as its folds run: what it reports (per epoch, or per fold: the mean of the
    folds so far, or with Wilcoxon the fold's own score), its fold records, its model (the
    last fold's), its micro-batch and why it stopped."""

    reporter: Reporter | VectorReporter | None
    #: The steps one fold reports at most (per epoch): fold ``f``'s epochs report from
    #: ``f * max_epochs``.
    max_epochs: int
    per_epoch: bool
    wilcoxon: bool
    micro: int
    records: list[FoldRecord] = field(default_factory=list)
    model: nn.Module | None = None
    stop_reason: StopReason = "Completed"
    oom_retries: int = 0
    #: This fold's reports for its record: the first value of each step, as Optuna keeps it
    #: (an OOM retry of the fold reports its epochs again).
    reported: dict[int, float] = field(default_factory=dict)
    #: The same with several objectives: the first vector of each step.
    vectors: dict[int, tuple[float, ...]] = field(default_factory=dict)

    def start_fold(self) -> None:
        """A fold starts: its record keeps its own reports only."""
        self.reported.clear()
        self.vectors.clear()

    def report(self, value: float, step: int, metrics: Mapping[str, float]) -> bool:
        """Report ``value`` at ``step`` (several objectives: the vector of their ``metrics``);
        whether the trial should be pruned."""
        if isinstance(self.reporter, VectorReporter):
            vector = tuple(metrics.get(m, math.nan) for m in self.reporter.metrics)
            return self.report_vector(vector, step)
        if self.reporter is None or math.isnan(value):
            return False
        self.reported.setdefault(step, value)
        self.reporter.report(value, step)
        return self.reporter.should_prune()

    def report_vector(self, vector: tuple[float, ...], step: int) -> bool:
        if not isinstance(self.reporter, VectorReporter) or any(map(math.isnan, vector)):
            return False
        self.vectors.setdefault(step, vector)
        self.reporter.report_vector(vector, step)
        return self.reporter.should_prune()

    def epoch_reporter(self, fold: int) -> Callable[[float, Mapping[str, float], int], bool] | None:
        """What fold ``fold`` reports each epoch through (``None``: it reports per fold)."""
        if not self.per_epoch:
            return None
        return lambda value, metrics, epoch: self.report(
            value, fold * self.max_epochs + epoch, metrics
        )

    def replay(self, previous: FoldRecord) -> bool:
        """A fold an earlier run of the trial finished: keep its record and report its values
        again; whether the trial is pruned."""
        self.records.append(previous)
        if previous.stop == "EarlyStopped":
            self.stop_reason = "EarlyStopped"
        if any(self.report_vector(v, step) for step, v in previous.vectors) or any(
            self.report(value, step, {}) for step, value in previous.reports
        ):
            self.stop_reason = "Pruned"
            return True
        return False

    def finish_fold(self, fold: int, outcome: FoldOutcome) -> bool:
        """A fold trained: report it (unless it reported per epoch) and record it; whether the
        trial is pruned."""
        self.model = outcome.model
        if outcome.stop == "EarlyStopped":
            self.stop_reason = "EarlyStopped"
        pruned = outcome.stop == "Pruned"
        if not pruned and not self.per_epoch:
            done = [r.metrics for r in self.records] + [outcome.metrics]
            scores = [r.score for r in self.records] + [outcome.score]
            value = outcome.score if self.wilcoxon else float(np.mean(scores))
            means = {m: float(np.mean([d.get(m, math.nan) for d in done])) for m in done[-1]}
            pruned = self.report(value, fold, means)
        self.records.append(
            FoldRecord(
                fold,
                outcome.score,
                outcome.metrics,
                outcome.epochs_run,
                outcome.stop,
                tuple(self.reported.items()),
                tuple(self.vectors.items()),
            )
        )
        if pruned:
            self.stop_reason = "Pruned"
        return pruned
