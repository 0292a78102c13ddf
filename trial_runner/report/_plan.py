"""Which figures a study's report shows, decided from its trials alone (pure; no plotting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import PROFILE_ATTR
from kubetune_study.progress import trial_telemetry

__all__ = [
    "FigureKind",
    "FigurePlan",
    "ProfileLink",
    "ReportPlan",
    "TelemetryRow",
    "plan_report",
    "telemetry_rows",
]

FigureKind = Literal[
    "History",
    "ParetoFront",
    "Importances",
    "ParallelCoordinate",
    "Slice",
    "IntermediateValues",
    "Timeline",
    "TrialTime",
    "Batches",
    "Memory",
    "Packing",
    "WarmUp",
    "Gpu",
]


#: The figures of kubetune's telemetry; the others are drawn by ``optuna.visualization``.
TELEMETRY_FIGURES: frozenset[FigureKind] = frozenset(
    {"TrialTime", "Batches", "Memory", "Packing", "WarmUp", "Gpu"}
)


@dataclass(frozen=True)
class FigurePlan:
    """One figure: its kind and, for a multi-objective study, the objective it plots."""

    kind: FigureKind
    title: str
    caption: str
    objective: int | None = None

    @property
    def telemetry(self) -> bool:
        """Whether it plots kubetune's telemetry (else it is one of Optuna's plots)."""
        return self.kind in TELEMETRY_FIGURES


@dataclass(frozen=True)
class TelemetryRow:
    """One finished trial's telemetry, as the telemetry figures plot it."""

    number: int
    state: str
    wall_seconds: float | None
    step_seconds: float | None
    eval_seconds: float | None
    overhead_seconds: float | None
    effective_batch: int | None
    micro_batch: int | None
    accumulation_steps: int | None
    estimated_peak_bytes: int | None
    peak_memory_bytes: int | None
    trial_in_process: int | None
    gpu_utilization: float | None


@dataclass(frozen=True)
class ProfileLink:
    number: int
    path: str


@dataclass(frozen=True)
class ReportPlan:
    """The figures to draw, the ones left out and why, and the profiles to link."""

    figures: tuple[FigurePlan, ...]
    skipped: tuple[tuple[str, str], ...]  # (what, why)
    telemetry: tuple[TelemetryRow, ...]
    profiles: tuple[ProfileLink, ...]

    def kinds(self) -> list[FigureKind]:
        return [f.kind for f in self.figures]


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def telemetry_rows(trials: Sequence[FrozenTrial]) -> list[TelemetryRow]:
    """The telemetry of the finished (complete or pruned) trials that recorded any."""
    rows = []
    for trial in trials:
        telemetry = trial_telemetry(trial)
        if trial.state not in _FINISHED or not telemetry:
            continue
        utilization = telemetry.get("gpu_utilization_mean")
        rows.append(
            TelemetryRow(
                number=trial.number,
                state=trial.state.name,
                wall_seconds=telemetry.get("wall_seconds"),
                step_seconds=telemetry.get("step_seconds"),
                eval_seconds=telemetry.get("eval_seconds"),
                overhead_seconds=telemetry.get("overhead_seconds"),
                effective_batch=telemetry.get("effective_batch"),
                micro_batch=telemetry.get("micro_batch"),
                accumulation_steps=telemetry.get("accumulation_steps"),
                estimated_peak_bytes=telemetry.get("estimated_peak_bytes"),
                peak_memory_bytes=telemetry.get("peak_memory_bytes"),
                trial_in_process=telemetry.get("trial_in_process"),
                gpu_utilization=float(utilization) if utilization is not None else None,
            )
        )
    return rows


def plan_report(
    trials: Sequence[FrozenTrial],
    directions: Sequence[StudyDirection],
    objective_names: Sequence[str],
) -> ReportPlan:
    """The figures of a study's report and the reason for each one left out.

    Args:
        trials: Every trial of the study.
        directions: The study's directions; more than one makes it multi-objective.
        objective_names: A name per direction, for titles.
    """
    plan = _Figures()
    _plan_optuna_figures(plan, trials, directions, objective_names)
    _plan_trial_figures(plan, trials)
    rows = telemetry_rows(trials)
    _plan_telemetry_figures(plan, rows)
    profiles = tuple(
        ProfileLink(t.number, str(t.user_attrs[PROFILE_ATTR]))
        for t in trials
        if isinstance(t.user_attrs.get(PROFILE_ATTR), str)
    )
    return ReportPlan(tuple(plan.figures), tuple(plan.skipped), tuple(rows), profiles)


@dataclass
class _Figures:
    """The figures planned so far, and those left out with why."""

    figures: list[FigurePlan] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, kind: FigureKind, title: str, caption: str, objective: int | None = None) -> None:
        self.figures.append(FigurePlan(kind, title, caption, objective))

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))


def _plan_optuna_figures(
    plan: _Figures,
    trials: Sequence[FrozenTrial],
    directions: Sequence[StudyDirection],
    objective_names: Sequence[str],
) -> None:
    """Optuna's plots of the complete trials: with several objectives, one per objective."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        plan.skip("Optuna's plots", "no trial has completed yet")
        return
    multi = len(directions) > 1
    targets: list[int | None] = list(range(len(directions))) if multi else [None]

    def per_objective(kind: FigureKind, title: str, caption: str) -> None:
        for objective in targets:
            named = title if objective is None else f"{title}: {objective_names[objective]}"
            plan.add(kind, named, caption, objective)

    per_objective(
        "History", "Optimization history", "Each complete trial's value and the best so far."
    )
    if multi:
        plan.add(
            "ParetoFront",
            "Pareto front",
            "Complete trials that no other trial beats on every objective, and the rest.",
        )
    if len(complete) >= 2:
        plan.add(
            "Importances",
            "Parameter importances",
            "How much of the objective's variation each parameter explains (fANOVA).",
        )
    else:
        plan.skip("Parameter importances", "they need at least two complete trials")
    per_objective(
        "ParallelCoordinate",
        "Parallel coordinates",
        "Every complete trial as a line through its parameters to its value.",
    )
    per_objective("Slice", "Slice plots", "The value against each parameter on its own.")


def _plan_trial_figures(plan: _Figures, trials: Sequence[FrozenTrial]) -> None:
    """Optuna's plots of every trial: what each reported, and when each ran."""
    if any(t.intermediate_values for t in trials):
        plan.add(
            "IntermediateValues",
            "Intermediate values",
            "What each trial reported to the pruner, step by step; pruned trials are dashed "
            "and end with a cross where the pruner stopped them.",
        )
    else:
        plan.skip("Intermediate values", "no trial reported any")
    if trials:
        plan.add(
            "Timeline",
            "Timeline",
            "When each trial ran, by state: parallel runners overlap.",
        )


def _plan_telemetry_figures(plan: _Figures, rows: Sequence[TelemetryRow]) -> None:
    """The figures of kubetune's telemetry, when any finished trial recorded it."""
    if not rows:
        plan.skip("Runner telemetry", "no finished trial recorded kubetune telemetry")
        return
    plan.add(
        "TrialTime",
        "Time per trial",
        "Each trial's wall time split into training steps, validation and overhead "
        "(everything else: batches, model build, bookkeeping).",
    )
    plan.add(
        "Batches",
        "Micro-batch and accumulation",
        "The micro-batch each trial trained with and the accumulation steps that kept its "
        "effective batch.",
    )
    plan.add(
        "Memory",
        "Memory: estimated and measured peak",
        "The planner's estimate of the training step's peak against the peak measured. On "
        "GPUs both count the CUDA allocator's memory; on CPUs the measured peak is the "
        "whole process's resident high-water mark (Python, torch, the data), far above the "
        "step's own. Trials that needed no estimate (every configuration fits) have none.",
    )
    plan.add(
        "Packing",
        "Trials per warm runner process",
        "Finished trials each runner process ran: its data, loaders and caches were "
        "loaded once for all of them.",
    )
    plan.add(
        "WarmUp",
        "Overhead by trial of the process",
        "Overhead of a process's 1st, 2nd, ... trial: the first pays for warming up.",
    )
    if any(row.gpu_utilization is not None for row in rows):
        plan.add("Gpu", "GPU utilisation", "Mean NVML utilisation during each trial.")
