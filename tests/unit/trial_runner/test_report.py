"""The report: which figures a study gets (pure), and the HTML built from real Optuna studies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import PROFILE_ATTR, TELEMETRY_ATTR, WORKER_ATTR
from trial_runner.report import plan_report, render_report, telemetry_rows
from trial_runner.report._figures import build_figure

MAXIMIZE = [StudyDirection.MAXIMIZE]
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(8, 64)}


def make_trial(
    number: int,
    state: TrialState,
    value: float | None = None,
    *,
    steps: dict[int, float] | None = None,
    telemetry: dict[str, Any] | None = None,
    worker: str = "runner-0:1",
    profile: str | None = None,
) -> FrozenTrial:
    attrs: dict[str, Any] = {WORKER_ATTR: worker}
    if telemetry is not None:
        attrs[TELEMETRY_ATTR] = telemetry
    if profile is not None:
        attrs[PROFILE_ATTR] = profile
    trial = optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"lr": 10 ** -(1 + number % 3), "width": 8 + 8 * number},
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        intermediate_values=steps or {},
    )
    trial.number = number
    return trial


def telemetry(trial_in_process: int, **extra: Any) -> dict[str, Any]:
    return {
        "wall_seconds": 2.0,
        "step_seconds": 1.5,
        "eval_seconds": 0.3,
        "overhead_seconds": 0.2,
        "effective_batch": 64,
        "micro_batch": 32,
        "accumulation_steps": 2,
        "estimated_peak_bytes": 50 * 2**20,
        "peak_memory_bytes": 48 * 2**20,
        "trial_in_process": trial_in_process,
        "gpu_utilization_mean": None,
        **extra,
    }


# --------------------------------------------------------------------------- the plan (pure)


def test_a_pruned_study_with_telemetry_gets_optunas_plots_and_the_runner_figures() -> None:
    trials = [
        make_trial(0, TrialState.COMPLETE, 0.8, steps={0: 0.7, 1: 0.8}, telemetry=telemetry(1)),
        make_trial(1, TrialState.PRUNED, steps={0: 0.3}, telemetry=telemetry(2)),
        make_trial(2, TrialState.COMPLETE, 0.9, steps={0: 0.8, 1: 0.9}, telemetry=telemetry(1)),
        make_trial(3, TrialState.RUNNING),
    ]
    plan = plan_report(trials, MAXIMIZE, ["accuracy"])
    assert plan.kinds() == [
        "History",
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
    ]
    assert plan.skipped == ()
    # Finished trials only: the running one has no telemetry row.
    assert [row.number for row in plan.telemetry] == [0, 1, 2]


def test_a_multi_objective_study_plots_each_objective_and_the_pareto_front() -> None:
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    trial = optuna.trial.create_trial(
        values=[0.9, 3.0], params={"lr": 0.01}, distributions={"lr": DISTRIBUTIONS["lr"]}
    )
    plan = plan_report([trial], directions, ["accuracy", "latency"])
    assert [(f.kind, f.objective) for f in plan.figures] == [
        ("History", 0),
        ("History", 1),
        ("ParetoFront", None),
        ("ParallelCoordinate", 0),
        ("ParallelCoordinate", 1),
        ("Slice", 0),
        ("Slice", 1),
        ("Timeline", None),
    ]
    assert plan.figures[1].title == "Optimization history: latency"
    assert ("Parameter importances", "they need at least two complete trials") in plan.skipped


def test_a_study_without_results_says_what_is_missing_and_why() -> None:
    plan = plan_report([make_trial(0, TrialState.RUNNING)], MAXIMIZE, ["accuracy"])
    assert plan.kinds() == ["Timeline"]
    assert dict(plan.skipped) == {
        "Optuna's plots": "no trial has completed yet",
        "Intermediate values": "no trial reported any",
        "Runner telemetry": "no finished trial recorded kubetune telemetry",
    }
    assert plan_report([], MAXIMIZE, ["accuracy"]).kinds() == []


def test_gpu_figure_and_profile_links_only_when_recorded() -> None:
    trials = [
        make_trial(0, TrialState.COMPLETE, 0.5, telemetry=telemetry(1, gpu_utilization_mean=71.5)),
        make_trial(1, TrialState.COMPLETE, 0.6, telemetry=telemetry(2), profile="/t/trial-1.json"),
    ]
    plan = plan_report(trials, MAXIMIZE, ["accuracy"])
    assert "Gpu" in plan.kinds()
    assert [row.gpu_utilization for row in telemetry_rows(trials)] == [71.5, None]
    assert [(p.number, p.path) for p in plan.profiles] == [(1, "/t/trial-1.json")]


# --------------------------------------------------------------------------- figures and HTML


def _study(trials: list[FrozenTrial], directions: list[str] | None = None) -> optuna.Study:
    study = optuna.create_study(study_name="unit", directions=directions or ["maximize"])
    study.add_trials(trials)
    return study


def _figure_sections(document: str) -> dict[str, str]:
    parts = re.split(r'<section class="figure" data-kind="', document)[1:]
    return {part.split('"', 1)[0] + f"#{i}": part for i, part in enumerate(parts)}


def test_intermediate_values_mark_where_the_pruner_stopped_a_trial() -> None:
    trials = [
        make_trial(0, TrialState.COMPLETE, 0.8, steps={0: 0.7, 1: 0.75, 2: 0.8}),
        make_trial(1, TrialState.PRUNED, steps={0: 0.2, 1: 0.25}),
    ]
    study = _study(trials)
    plan = plan_report(study.get_trials(), MAXIMIZE, ["accuracy"])
    (intermediate,) = [f for f in plan.figures if f.kind == "IntermediateValues"]
    figure = build_figure(intermediate, study, study.get_trials(), plan.telemetry, ["accuracy"])
    by_name = {trace.name: trace for trace in figure.data}
    assert set(by_name) == {"Trial0", "Trial1 (pruned)"}
    pruned = by_name["Trial1 (pruned)"]
    assert pruned.line.dash == "dot"
    assert list(pruned.marker.symbol) == ["circle", "x"]  # the cross at the last step
    assert by_name["Trial0"].line.dash is None


def test_report_inlines_plotly_once_and_holds_one_plot_per_planned_figure(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "traces" / "trial-2.pt.trace.json"
    trace.parent.mkdir()
    trace.write_text('{"traceEvents": []}')
    trials = [
        make_trial(0, TrialState.COMPLETE, 0.8, steps={0: 0.8}, telemetry=telemetry(1)),
        make_trial(1, TrialState.PRUNED, steps={0: 0.1}, telemetry=telemetry(2)),
        make_trial(
            2, TrialState.COMPLETE, 0.9, steps={0: 0.9}, telemetry=telemetry(1), profile=str(trace)
        ),
    ]
    document, plan = render_report(_study(trials), output_dir=tmp_path / "out", names=["accuracy"])
    from plotly.offline import get_plotlyjs

    # Offline: plotly.js is inside the file once, and the page loads nothing else.
    assert document.count(get_plotlyjs()) == 1
    page = document.replace(get_plotlyjs(), "")
    assert "<script src=" not in page and "cdn.plot.ly" not in page
    assert page.count("Plotly.newPlot(") == len(plan.figures)
    sections = _figure_sections(document)
    assert [key.split("#")[0] for key in sections] == plan.kinds()
    for key, section in sections.items():
        assert "Plotly.newPlot(" in section, key
    assert "<h1>unit</h1>" in document
    assert "best value</td><td>0.9 (trial 2)" in document
    assert "trials per warm process</td><td>3 (1 processes)" in document
    # The profile is linked relative to where the report is written.
    assert '<a href="../traces/trial-2.pt.trace.json">' in document


def test_multi_objective_report_shows_optunas_pareto_front(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="mo", directions=["maximize", "minimize"])
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["accuracy", "latency"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        return x, x**2 + trial.suggest_float("y", 0, 1)

    study.optimize(objective, n_trials=12)
    document, plan = render_report(study, output_dir=tmp_path)
    assert "ParetoFront" in plan.kinds()
    pareto = next(s for k, s in _figure_sections(document).items() if k.startswith("ParetoFront"))
    assert "Pareto front" in pareto and "Plotly.newPlot(" in pareto
    assert "Pareto-optimal trials</td><td>" in document
    assert "accuracy (maximize), latency (minimize)" in document


@pytest.mark.parametrize("state", [TrialState.RUNNING, TrialState.FAIL])
def test_report_of_a_study_without_results_still_renders(tmp_path: Path, state: TrialState) -> None:
    document, plan = render_report(_study([make_trial(0, state)]), output_dir=tmp_path)
    assert "no trial has completed yet" in document
    assert document.count("Plotly.newPlot(") == len(plan.figures)
