"""``kubetune results``: a study's summary, the best of each stage (or the Pareto front) and
per-trial telemetry."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import PRIOR_ATTR
from kubetune_api.spec import StudySpec, best_first_key, choose_sampler, dump_yaml, load_study
from kubetune_study.constraints import feasible, violated
from kubetune_study.pareto import front_document
from kubetune_study.progress import StudyProgress, is_preempted, retried_numbers, trial_telemetry
from kubetune_study.storage import read_progress
from kubetune_study.warmstart import recorded_report
from trial_runner.cli._common import EXIT_OK, fmt, mib, open_existing_study, storage_and_name

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial
    from rich.table import Table

__all__ = ["cmd_results"]


def cmd_results(args: argparse.Namespace) -> int:
    from rich.console import Console

    study_doc = load_study(args.study)
    spec = study_doc.spec
    url, name = storage_and_name(args, study_doc)
    study = open_existing_study(url, name)
    progress = read_progress(study, spec)
    trials = study.get_trials(deepcopy=False)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # wide enough for the trials table in logs and pipes
    console.print(_summary_table(name, spec, progress, trials))
    warm_start = recorded_report(study)
    if warm_start is not None:
        console.print(warm_start.summary(), markup=False)
    if len(progress.stages) > 1:
        console.print(_stages_table(progress))
    if spec.multi_objective:
        console.print(_front_table(spec, progress))
    console.print(_trials_table(spec, trials, args.top))
    if args.output:
        Path(args.output).write_text(dump_yaml(_document(name, spec, progress)))
        print(f"wrote {args.output}")
    return EXIT_OK


def _summary_table(
    name: str, spec: StudySpec, progress: StudyProgress, trials: Sequence[FrozenTrial]
) -> Table:
    from rich.table import Table

    priors = sum(PRIOR_ATTR in t.user_attrs for t in trials)
    summary = Table(title=f"study {name}", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("outcome", progress.outcome),
        ("finished", f"{progress.finished}/{progress.max_trials}"),
        ("complete", progress.complete),
        ("pruned", progress.pruned),
        ("failed", progress.failed),
        ("preempted", f"{progress.preempted} (re-queued; not failures, not in the budget)"),
        ("running", progress.running),
    ]
    if spec.constraints:
        bounds = "; ".join(c.describe() for c in spec.constraints)
        rows.append(("infeasible", f"{progress.infeasible} of the complete (outside {bounds})"))
    choice = choose_sampler(spec)
    rows.append(("sampler", f"{choice.type} ({choice.reason})"))
    if spec.multi_objective:
        rows.append(("Pareto front", f"{len(progress.pareto_front)} trial(s)"))
    else:
        rows += [("best value", fmt(progress.best_value)), ("best trial", progress.best_trial)]
    if priors:
        rows.append(("warm-start priors", f"{priors} trial(s) from another study, not counted"))
    for label, value in rows:
        summary.add_row(label, str(value))
    return summary


def _stages_table(progress: StudyProgress) -> Table:
    from rich.table import Table

    stages = Table(title="stages")
    for col in ("stage", "trials", "complete", "pruned", "best", "best params"):
        stages.add_column(col)
    for row in progress.stages:
        stages.add_row(
            str(row.index + 1),
            str(row.quota),
            str(row.complete),
            str(row.pruned),
            _values(row.best_values),
            ", ".join(f"{k}={v}" for k, v in (row.best_params or {}).items()),
        )
    return stages


def _front_table(spec: StudySpec, progress: StudyProgress) -> Table:
    from rich.table import Table

    front = Table(title=f"Pareto front ({len(progress.pareto_front)} trials)")
    front.add_column("#")
    for objective in spec.all_objectives:
        front.add_column(f"{objective.metric} ({objective.direction})")
    front.add_column("params")
    for t in progress.pareto_front:
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        front.add_row(str(t.number), *(fmt(v) for v in t.values), params)
    return front


def _trials_table(spec: StudySpec, trials: Sequence[FrozenTrial], top: int) -> Table:
    """The ``top`` finished trials (warm-start priors left out), complete ones first, best
    first, with their telemetry."""
    from optuna.trial import TrialState
    from rich.table import Table

    table = Table(title=f"top {top} trials")
    cols = ["#", "state", "values" if spec.multi_objective else "value", "epochs", "folds"]
    cols += ["micro×acc", "wall s", "overhead s", "peak MiB", "precision", "stop"]
    for col in cols:
        table.add_column(col)
    finished = [t for t in trials if t.state.is_finished() and PRIOR_ATTR not in t.user_attrs]
    retried = retried_numbers(trials)
    directions = spec.directions
    ranked = sorted(
        finished,
        key=lambda t: (
            t.state != TrialState.COMPLETE,
            not feasible(t),
            best_first_key(directions, t.values or [0.0] * len(directions)),
        ),
    )
    for t in ranked[:top]:
        a = trial_telemetry(t)
        state = "PREEMPTED" if is_preempted(t, retried) else t.state.name
        if violated(t):
            state += f" (infeasible: {', '.join(violated(t))})"
        table.add_row(
            str(t.number),
            state,
            _values(t.values),
            str(a.get("epochs_run", "-")),
            str(a.get("folds_run", "-")),
            f"{a.get('micro_batch', '-')}×{a.get('accumulation_steps', '-')}",
            fmt(a.get("wall_seconds")),
            fmt(a.get("overhead_seconds")),
            mib(a.get("peak_memory_bytes")),
            str(a.get("precision", "-")),
            str(a.get("stop_reason", "-")),
        )
    return table


def _values(values: Any) -> str:
    return " / ".join(fmt(v) for v in values) if values else "-"


def _document(name: str, spec: StudySpec, progress: StudyProgress) -> dict[str, Any]:
    """What ``--output`` writes: the best parameters, value and counts, or the Pareto front."""
    out: dict[str, Any] = {"study": name, "outcome": progress.outcome}
    if spec.multi_objective:
        out["paretoFront"] = front_document(progress.pareto_front, spec.all_objectives)
    else:
        out.update(
            bestValue=progress.best_value,
            bestParams=progress.best_params,
            bestTrial=progress.best_trial,
        )
    out["trials"] = {
        "complete": progress.complete,
        "pruned": progress.pruned,
        "failed": progress.failed,
        "preempted": progress.preempted,
        "running": progress.running,
        "budget": progress.max_trials,
    }
    if spec.constraints:
        out["trials"]["infeasible"] = progress.infeasible
    choice = choose_sampler(spec)
    out["sampler"] = {"type": choice.type, "reason": choice.reason}
    stages = []
    for row in progress.stages:
        stage: dict[str, Any] = {"stage": row.index + 1}
        if spec.multi_objective:
            values = row.best_values or ()
            stage["bestValues"] = {
                o.metric: v for o, v in zip(spec.all_objectives, values, strict=False)
            } or None
        else:
            stage["bestValue"] = row.best_value
        stage.update(bestParams=row.best_params, bestTrial=row.best_trial)
        stages.append(stage)
    out["stages"] = stages
    return out
