"""``kubetune report`` on a study that real runners ran on PostgreSQL, opened in headless
Chromium: every plot renders (an SVG with its traces), not a blank page."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from kubetune_api.contract import PROFILE_ATTR
from kubetune_api.spec import load_study
from kubetune_study.constraints import feasible
from tests.harness.browser import Browser, page_text, publish_screenshot
from tests.harness.runners import runner_env
from tests.harness.studies import digits_study

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]

#: The figures this study gets: single objective, pruned trials, runner telemetry on CPU.
EXPECTED_FIGURES = [
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
# What plotly draws for a trace: scatter and bar traces, parallel-coordinate axes.
DRAWN = re.compile(r'class="(?:[^"]*\btrace\b[^"]*|parcoords[^"]*)"')


def _run(kubetune_cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kubetune_cmd, *args], capture_output=True, text=True, env=runner_env(), timeout=900
    )


def _sections(dom: str) -> list[tuple[str, str]]:
    parts = re.split(r'<section class="figure" data-kind="', dom)[1:]
    return [(part.split('"', 1)[0], part.split("</section>", 1)[0]) for part in parts]


def _assert_every_figure_drawn(dom: str) -> None:
    """The report holds the expected figures, in order, each an SVG with its traces."""
    sections = _sections(dom)
    assert [kind for kind, _ in sections] == EXPECTED_FIGURES
    for kind, section in sections:
        assert 'class="main-svg"' in section, f"{kind}: plotly drew nothing"
        assert DRAWN.search(section), f"{kind}: a plot without traces"


def test_report_of_a_run_study_renders_every_plot_in_a_headless_browser(
    postgres_url: str,
    tmp_path: Path,
    write_study: Callable[[dict[str, Any]], Path],
    kubetune_cmd: list[str],
) -> None:
    browser = Browser(tmp_path)
    study_file = write_study(
        digits_study(
            "digits-mlp",
            stages=[{"groups": ["Critical"], "trials": 4}, {"groups": ["Critical", "Model"]}],
            budget={"maxTrials": 10},
            pruner={"type": "Median", "nStartupTrials": 2},
            training={"epochs": 2, "folds": 3, "profile": {"trials": "First"}},
        )
    )
    ran = _run(
        kubetune_cmd, "run", str(study_file), "--storage", postgres_url, "--workers", "2",
        "--no-progress", "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr

    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    made = _run(
        kubetune_cmd, "report", str(study_file), "--storage", postgres_url,
        "--output", str(report),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == ""  # progress goes to stderr
    assert "plotting Parameter importances" in made.stderr
    assert f"wrote {report}" in made.stderr

    dom = browser.dom(report.as_uri(), width=1280, height=900)
    _assert_every_figure_drawn(dom)
    text = page_text(dom)
    assert "Best of each stage" in text
    study = optuna.load_study(study_name="digits-mlp", storage=postgres_url)
    assert f"best value {study.best_value:.6g} (trial {study.best_trial.number})" in text
    # The first trial of each runner was profiled, and the report links the traces.
    traced = [t for t in study.trials if PROFILE_ATTR in t.user_attrs]
    assert len(traced) == 2, [t.user_attrs for t in study.trials]
    for trial in traced:
        assert Path(trial.user_attrs[PROFILE_ATTR]).is_file()
        assert Path(trial.user_attrs[PROFILE_ATTR]).name in dom

    shot = browser.screenshot(
        report.as_uri(), tmp_path / "report.png", width=1280, height=2200, wait_ms=5000
    )
    publish_screenshot(shot)


def test_conditional_example_leaves_inactive_parameters_out_of_every_output(
    postgres_url: str, tmp_path: Path, kubetune_cmd: list[str]
) -> None:
    """examples/digits-conditional.yaml on PostgreSQL with two runners: each trial holds only
    its active parameters, the results and the report say so, and an infeasible trial is
    never the best."""
    example = REPO / "examples" / "digits-conditional.yaml"
    spec = load_study(example).spec
    ran = _run(
        kubetune_cmd, "run", str(example), "--storage", postgres_url, "--trials", "8",
        "--no-progress", "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    study = optuna.load_study(study_name="digits-conditional", storage=postgres_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8
    for trial in complete:
        assert trial.params == spec.active_params(trial.params), trial.params
        assert set(trial.distributions) == set(trial.params)
    assert len({frozenset(t.params) for t in complete}) >= 2  # the space really is conditional
    infeasible = [t for t in complete if not feasible(t)]
    assert infeasible, [t.constraints for t in complete]  # the bound is tested, not idle
    best = study.best_trial
    assert feasible(best) and best.number not in {t.number for t in infeasible}

    out = tmp_path / "best.yaml"
    results = _run(kubetune_cmd, "results", str(example), "--storage", postgres_url,
                   "--output", str(out))  # fmt: skip
    assert results.returncode == 0, results.stderr
    assert "infeasible" in results.stdout and "TPE (Auto: the search space is conditional" in (
        " ".join(results.stdout.split())
    )
    document = yaml.safe_load(out.read_text())
    assert document["bestTrial"] == best.number and document["bestParams"] == best.params
    assert document["trials"]["infeasible"] == len(infeasible)
    assert document["sampler"]["type"] == "TPE"

    report = tmp_path / "report.html"
    made = _run(kubetune_cmd, "report", str(example), "--storage", postgres_url,
                "--output", str(report))  # fmt: skip
    assert made.returncode == 0, made.stderr
    dom = Browser(tmp_path).dom(report.as_uri(), width=1280, height=900)
    _assert_every_figure_drawn(dom)
    text = page_text(dom)
    feasible_count = len(complete) - len(infeasible)
    assert f"feasible / infeasible {feasible_count} / {len(infeasible)}" in text, text[:2000]
    assert f"best value {best.value:.6g} (trial {best.number})" in text
