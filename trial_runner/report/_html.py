"""The report as one self-contained HTML file: plotly.js inlined once, no network needed."""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune_study.constraints import feasible
from kubetune_study.progress import StudyProgress, summarize_telemetry
from trial_runner.report._figures import build_figure
from trial_runner.report._plan import ProfileLink, ReportPlan, plan_report

__all__ = ["objective_names", "render_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.8rem; text-align: left; }
section.figure { margin: 2rem 0; }
section.figure p { color: #555; margin: 0.2rem 0; }
.muted { color: #888; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def objective_names(study: optuna.Study, default: Sequence[str] = ()) -> list[str]:
    """A name per objective: Optuna's metric names, else ``default``, else "Objective i"."""
    count = len(study.directions)
    names = study.metric_names
    if names and len(names) == count:
        return list(names)
    if len(default) == count:
        return list(default)
    return ["Objective"] if count == 1 else [f"Objective {i}" for i in range(count)]


def render_report(
    study: optuna.Study,
    *,
    output_dir: Path,
    names: Sequence[str] = (),
    progress: StudyProgress | None = None,
    on_figure: Callable[[str], None] | None = None,
) -> tuple[str, ReportPlan]:
    """The report's HTML and the plan it followed.

    Args:
        study: The Optuna study (any storage).
        output_dir: Where the file will be written, so links to profile traces are relative.
        names: Objective names when the study stores none (e.g. the spec's metric).
        progress: The study's progress against its spec (budget, stages), when known.
        on_figure: Called with each figure's title before it is built (progress lines).
    """
    import plotly.offline

    trials = study.get_trials(deepcopy=False)
    objectives = objective_names(study, names)
    plan = plan_report(trials, study.directions, objectives)
    sections = []
    headings = {
        False: '<h2 id="optuna">Optuna\'s plots</h2>',
        True: '<h2 id="telemetry">Runner telemetry</h2>',
    }
    for index, figure_plan in enumerate(plan.figures):
        heading = headings.pop(figure_plan.telemetry, "")
        if on_figure is not None:
            on_figure(figure_plan.title)
        figure = build_figure(figure_plan, study, trials, plan.telemetry, objectives)
        figure.update_layout(template="plotly_white")
        div = figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{index}",
            config={"displaylogo": False, "responsive": True},
        )
        sections.append(
            f'{heading}<section class="figure" data-kind="{figure_plan.kind}">'
            f"<h3>{_e(figure_plan.title)}</h3><p>{_e(figure_plan.caption)}</p>{div}</section>"
        )
    body = [
        f"<h1>{_e(study.study_name)}</h1>",
        f'<p class="sub">kubetune report, {_e(_now())}; Optuna {_e(optuna.__version__)}</p>',
        _summary(study, trials, objectives, progress),
        _stages(progress),
        *sections,
        _skipped(plan.skipped),
        _profiles(plan.profiles, output_dir),
    ]
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(study.study_name)}: kubetune report</title>"
        f"<style>{_STYLE}</style>"
        # plotly.js once, inline: the file opens offline and every figure shares it.
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{''.join(part for part in body if part)}</body></html>\n"
    )
    return document, plan


def _e(text: object) -> str:
    return html.escape(str(text))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(rows: Sequence[Sequence[object]], header: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{cells}</table>"


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.6g}{unit}"


def _params(params: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (params or {}).items()) or "-"


def _summary(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    objectives: Sequence[str],
    progress: StudyProgress | None,
) -> str:
    counts = {state: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state] += 1
    directions = ", ".join(
        f"{name} ({direction.name.lower()})"
        for name, direction in zip(objectives, study.directions, strict=True)
    )
    rows: list[tuple[str, object]] = [
        ("objectives" if len(objectives) > 1 else "objective", directions)
    ]
    if progress is not None:
        rows.append(("outcome", progress.outcome))
        rows.append(("finished", f"{progress.finished} of {progress.max_trials}"))
    rows += [
        ("complete", counts[TrialState.COMPLETE]),
        ("pruned", counts[TrialState.PRUNED]),
        ("failed", counts[TrialState.FAIL]),
        ("running", counts[TrialState.RUNNING]),
    ]
    constrained = any(t.constraints for t in trials)
    feasible_complete = sum(t.state == TrialState.COMPLETE and feasible(t) for t in trials)
    if constrained:
        rows.append(
            (
                "feasible / infeasible",
                f"{feasible_complete} / "
                f"{counts[TrialState.COMPLETE] - feasible_complete} (of the complete)",
            )
        )
    # Optuna's best_trial and best_trials leave out trials outside the constraints.
    if feasible_complete and len(study.directions) > 1:
        pareto = ", ".join(str(t.number) for t in study.best_trials)
        rows.append(("Pareto-optimal trials", pareto))
    elif feasible_complete:
        best = study.best_trial
        rows.append(("best value", f"{_fmt(best.value)} (trial {best.number})"))
        rows.append(("best parameters", _params(best.params)))
    telemetry = summarize_telemetry(trials)
    rows.append(("mean overhead per trial", _fmt(telemetry.mean_overhead_seconds, " s")))
    rows.append(
        (
            "trials per warm process",
            f"{_fmt(telemetry.trials_per_process)} ({telemetry.processes} processes)",
        )
    )
    return "<h2>Summary</h2>" + _table(rows)


def _stages(progress: StudyProgress | None) -> str:
    if progress is None or len(progress.stages) < 2:
        return ""
    rows = [
        (
            row.index + 1,
            row.quota,
            row.complete,
            row.pruned,
            _fmt(row.best_value),
            row.best_trial if row.best_trial is not None else "-",
            _params(row.best_params),
        )
        for row in progress.stages
    ]
    header = ("stage", "trials", "complete", "pruned", "best", "best trial", "best parameters")
    return "<h2>Best of each stage</h2>" + _table(rows, header)


def _skipped(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{_e(what)}: {_e(why)}</li>" for what, why in skipped)
    return f'<h2>Not shown</h2><ul class="muted">{items}</ul>'


def _profiles(profiles: Sequence[ProfileLink], output_dir: Path) -> str:
    if not profiles:
        return ""
    items = []
    for link in profiles:
        path = Path(link.path)
        if path.is_file():
            href = os.path.relpath(path, output_dir.resolve())
            target = f'<a href="{_e(href)}">{_e(path.name)}</a>'
        else:
            target = f"<code>{_e(link.path)}</code> (on the runner, not on this machine)"
        items.append(f"<li>trial {link.number}: {target}</li>")
    return (
        "<h2>Profiles</h2><p>torch.profiler traces (Chrome trace format): open them in "
        "<code>https://ui.perfetto.dev</code> or <code>chrome://tracing</code>.</p>"
        f"<ul>{''.join(items)}</ul>"
    )
