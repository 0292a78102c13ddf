"""The report's figures: Optuna's own plots (``optuna.visualization``) and plotly figures of
kubetune's telemetry. Nothing is drawn by hand."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune_study.progress import trials_by_process
from trial_runner.report._plan import FigurePlan, TelemetryRow

__all__ = ["build_figure"]

_MIB = 2**20
_PRUNED_COLOR = "#d62728"
_TRACE_NAME = re.compile(r"^Trial(\d+)$")


def build_figure(
    plan: FigurePlan,
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    rows: Sequence[TelemetryRow],
    objective_names: Sequence[str],
) -> Any:
    """The plotly figure ``plan`` names (a ``plotly.graph_objects.Figure``)."""
    import optuna.visualization as vis

    target: Callable[[FrozenTrial], float] | None = None
    target_name = objective_names[0] if objective_names else "Objective Value"
    if plan.objective is not None:
        index = plan.objective
        target, target_name = (lambda t: t.values[index]), objective_names[index]
    kind = plan.kind
    figure: Any
    if kind == "History":
        figure = vis.plot_optimization_history(study, target=target, target_name=target_name)
    elif kind == "ParetoFront":
        figure = vis.plot_pareto_front(study, target_names=list(objective_names))
    elif kind == "Importances":
        # fANOVA with a fixed seed, so the same study gives the same report.
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        figure = vis.plot_param_importances(study, evaluator=evaluator)
    elif kind == "ParallelCoordinate":
        figure = vis.plot_parallel_coordinate(study, target=target, target_name=target_name)
    elif kind == "Slice":
        figure = vis.plot_slice(study, target=target, target_name=target_name)
    elif kind == "IntermediateValues":
        figure = _mark_pruned(vis.plot_intermediate_values(study), trials)
    elif kind == "Timeline":
        figure = vis.plot_timeline(study)
    else:
        figure = _TELEMETRY[kind](rows, trials)
    # The page's heading names the figure; a second title inside it would repeat it.
    figure.update_layout(title_text="", margin={"t": 30})
    return figure


def _mark_pruned(figure: Any, trials: Sequence[FrozenTrial]) -> Any:
    """Dash the lines of pruned trials and put a cross on the step where each was stopped."""
    states = {t.number: t.state for t in trials}
    for trace in figure.data:
        match = _TRACE_NAME.match(trace.name or "")
        if match is None or states.get(int(match.group(1))) != TrialState.PRUNED:
            continue
        points = len(trace.x)
        trace.update(
            name=f"{trace.name} (pruned)",
            line={"dash": "dot", "color": _PRUNED_COLOR},
            marker={
                "maxdisplayed": 0,
                "color": _PRUNED_COLOR,
                "symbol": ["circle"] * (points - 1) + ["x"],
                "size": [5] * (points - 1) + [12],
            },
        )
    return figure


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _per_trial(
    trace: Any,
    name: str,
    rows: Sequence[TelemetryRow],
    value: Callable[[TelemetryRow], Any],
    **style: Any,
) -> Any:
    """A ``trace`` (``go.Bar``, ``go.Scatter``) of one telemetry value of each trial, by trial."""
    return trace(name=name, x=[r.number for r in rows], y=[value(r) for r in rows], **style)


def _trial_time(rows: Sequence[TelemetryRow], _trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    figure = go.Figure(
        [
            _per_trial(go.Bar, "training steps", rows, lambda r: r.step_seconds),
            _per_trial(go.Bar, "validation", rows, lambda r: r.eval_seconds),
            _per_trial(go.Bar, "overhead", rows, lambda r: r.overhead_seconds),
        ]
    )
    figure.update_layout(barmode="stack", xaxis_title="Trial", yaxis_title="Seconds")
    return figure


def _batches(rows: Sequence[TelemetryRow], _trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    from plotly.subplots import make_subplots

    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(
        _per_trial(go.Bar, "micro-batch", rows, lambda r: r.micro_batch), secondary_y=False
    )
    effective = _per_trial(
        go.Scatter,
        "effective batch",
        rows,
        lambda r: r.effective_batch,
        mode="markers",
        marker={"symbol": "line-ew-open", "size": 14},
    )
    figure.add_trace(effective, secondary_y=False)
    accumulation = _per_trial(
        go.Scatter, "accumulation steps", rows, lambda r: r.accumulation_steps, mode="lines+markers"
    )
    figure.add_trace(accumulation, secondary_y=True)
    figure.update_xaxes(title_text="Trial")
    figure.update_yaxes(title_text="Samples", secondary_y=False)
    figure.update_yaxes(title_text="Accumulation steps", secondary_y=True)
    return figure


def _mib(value: int | None) -> float | None:
    return None if value is None else value / _MIB


def _memory(rows: Sequence[TelemetryRow], _trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    figure = go.Figure(
        [
            _per_trial(go.Bar, "estimated peak", rows, lambda r: _mib(r.estimated_peak_bytes)),
            _per_trial(go.Bar, "measured peak", rows, lambda r: _mib(r.peak_memory_bytes)),
        ]
    )
    figure.update_layout(barmode="group", xaxis_title="Trial", yaxis_title="MiB")
    return figure


def _packing(_rows: Sequence[TelemetryRow], trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    counts = trials_by_process(trials)
    figure = go.Figure([go.Bar(x=list(counts), y=list(counts.values()), name="finished trials")])
    figure.update_layout(xaxis_title="Runner process (host:pid)", yaxis_title="Finished trials")
    return figure


def _warm_up(rows: Sequence[TelemetryRow], _trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    figure = go.Figure(
        [
            go.Scatter(
                x=[r.trial_in_process for r in rows],
                y=[r.overhead_seconds for r in rows],
                text=[f"trial {r.number}" for r in rows],
                mode="markers",
                name="overhead",
            )
        ]
    )
    figure.update_layout(
        xaxis_title="Trial of its runner process (1 = first)", yaxis_title="Overhead, seconds"
    )
    return figure


def _gpu(rows: Sequence[TelemetryRow], _trials: Sequence[FrozenTrial]) -> Any:
    go = _go()
    figure = go.Figure([_per_trial(go.Bar, "GPU", rows, lambda r: r.gpu_utilization)])
    figure.update_layout(xaxis_title="Trial", yaxis_title="Mean utilisation, %")
    return figure


_TELEMETRY: dict[str, Callable[[Sequence[TelemetryRow], Sequence[FrozenTrial]], Any]] = {
    "TrialTime": _trial_time,
    "Batches": _batches,
    "Memory": _memory,
    "Packing": _packing,
    "WarmUp": _warm_up,
    "Gpu": _gpu,
}
