"""``kubetune results``: a study's summary, the best of each stage and per-trial telemetry."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from trial_runner.cli._common import EXIT_OK, fmt, mib, open_existing_study, storage_url
from trial_runner.progress import trial_telemetry
from trial_runner.spec import load_study
from trial_runner.storage import read_progress

__all__ = ["cmd_results"]


def cmd_results(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    study_doc = load_study(args.study)
    spec = study_doc.spec
    url = storage_url(args.storage)
    name = args.study_name or study_doc.name
    study = open_existing_study(url, name)
    progress = read_progress(study, spec)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # wide enough for the trials table in logs and pipes
    summary = Table(title=f"study {name}", show_header=False)
    for label, value in [
        ("outcome", progress.outcome),
        ("finished", f"{progress.finished}/{progress.max_trials}"),
        ("complete", progress.complete),
        ("pruned", progress.pruned),
        ("failed", progress.failed),
        ("running", progress.running),
        ("best value", fmt(progress.best_value)),
        ("best trial", progress.best_trial),
    ]:
        summary.add_row(label, str(value))
    console.print(summary)
    if len(progress.stages) > 1:
        stages = Table(title="stages")
        for col in ("stage", "trials", "complete", "pruned", "best", "best params"):
            stages.add_column(col)
        for row in progress.stages:
            stages.add_row(
                str(row.index + 1),
                str(row.quota),
                str(row.complete),
                str(row.pruned),
                fmt(row.best_value),
                ", ".join(f"{k}={v}" for k, v in (row.best_params or {}).items()),
            )
        console.print(stages)
    trials = Table(title=f"top {args.top} trials")
    cols = ["#", "state", "value", "epochs", "folds", "micro×acc", "wall s", "overhead s"]
    cols += ["peak MiB", "precision", "stop"]
    for col in cols:
        trials.add_column(col)
    from optuna.trial import TrialState

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    ranked = sorted(
        finished,
        key=lambda t: (t.state != TrialState.COMPLETE, spec.objective.best_first(t.value or 0)),
    )
    for t in ranked[: args.top]:
        a = trial_telemetry(t)
        trials.add_row(
            str(t.number),
            t.state.name,
            fmt(t.value),
            str(a.get("epochs_run", "-")),
            str(a.get("folds_run", "-")),
            f"{a.get('micro_batch', '-')}×{a.get('accumulation_steps', '-')}",
            fmt(a.get("wall_seconds")),
            fmt(a.get("overhead_seconds")),
            mib(a.get("peak_memory_bytes")),
            str(a.get("precision", "-")),
            str(a.get("stop_reason", "-")),
        )
    console.print(trials)
    if args.output:
        out = {
            "study": name,
            "outcome": progress.outcome,
            "bestValue": progress.best_value,
            "bestParams": progress.best_params,
            "bestTrial": progress.best_trial,
            "trials": {
                "complete": progress.complete,
                "pruned": progress.pruned,
                "failed": progress.failed,
                "running": progress.running,
                "budget": progress.max_trials,
            },
            "stages": [
                {
                    "stage": row.index + 1,
                    "bestValue": row.best_value,
                    "bestParams": row.best_params,
                    "bestTrial": row.best_trial,
                }
                for row in progress.stages
            ],
        }
        Path(args.output).write_text(yaml.safe_dump(out, sort_keys=False))
        print(f"wrote {args.output}")
    return EXIT_OK
