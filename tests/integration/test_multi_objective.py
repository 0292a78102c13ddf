"""A study with two objectives, shared by two runner processes on PostgreSQL: to the end of
every trial, and pruned by MO-ASHA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kubetune_api.contract import TELEMETRY_ATTR, WORKER_ATTR
from kubetune_api.spec import StudySpec, load_study
from kubetune_study.mo_pruning import RUNG_PREFIX, intermediate_vectors
from kubetune_study.storage import ensure_study, open_storage, read_progress
from tests.harness.runners import kubetune, start_runners_together
from tests.harness.studies import categorical_param, digits_study, float_param
from tests.integration.test_shared_study import finish

OBJECTIVES = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


def digits_parameters(hidden: int, layers: int = 2) -> float:
    """DigitsMLP's parameter count: 64 inputs, ``layers`` hidden layers, 10 classes."""
    count, width = 0, 64
    for _ in range(layers):
        count += width * hidden + hidden
        width = hidden
    return float(count + width * 10 + 10)


def test_two_runners_finish_exactly_the_budget_of_a_two_objective_study(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    doc = digits_study(
        "pareto",
        objective=None,
        objectives=OBJECTIVES,
        budget={"maxTrials": 8},
        sampler={"type": "NSGAII", "seed": 0, "populationSize": 4},
    )
    path = write_study(doc)
    spec = load_study(path).spec
    study = _run_two_runners(path, spec, postgres_url, "pareto", tmp_path)

    trials = study.get_trials()
    assert len(trials) == 8, [t.state for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(8))
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2, "both runners took trials"
    for t in trials:
        accuracy, parameters = t.values
        metrics = t.user_attrs[TELEMETRY_ATTR]["metrics"]
        assert accuracy == metrics["accuracy"] and parameters == metrics["parameters"]
        assert parameters == digits_parameters(t.params["hidden_size"])
    # The front kubetune reports is Optuna's own.
    progress = read_progress(study, spec)
    assert progress.finished == 8 and progress.outcome == "BudgetSpent"
    assert {t.number for t in progress.pareto_front} == {t.number for t in study.best_trials}

    out = tmp_path / "front.yaml"
    results = kubetune(
        "results", str(path), "--storage", postgres_url, "--output", str(out), timeout=120
    )
    assert results.returncode == 0, results.stderr
    assert "Pareto front" in results.stdout
    front = yaml.safe_load(out.read_text())["paretoFront"]
    assert front["size"] == len(study.best_trials)
    assert {t["trial"] for t in front["trials"]} == {t.number for t in study.best_trials}
    assert all(set(t["values"]) == {"accuracy", "parameters"} for t in front["trials"])


def test_two_runners_prune_a_two_objective_study_with_moasha_to_the_exact_budget(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    epochs = 6
    doc = digits_study(
        "moasha",
        objective=None,
        objectives=OBJECTIVES,
        searchSpace=[
            float_param("learning_rate", "1e-4", "1e-1", log=True),
            categorical_param("hidden_size", [16, 64]),
        ],
        budget={"maxTrials": 12},
        sampler={"type": "Random", "seed": 0},
        pruner={"type": "MOASHA", "minResource": 1, "reductionFactor": 2},
        training={"epochs": epochs, "reportEvery": "Epoch"},
    )
    path = write_study(doc)
    spec = load_study(path).spec
    study = _run_two_runners(path, spec, postgres_url, "moasha", tmp_path)

    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(12)), [t.state for t in trials]
    states = [t.state for t in trials]
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) < 12, states
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2, "both runners took trials"
    rungs = {1, 2, 4}  # min_resource * 2**k below the last step (5)
    for t in trials:
        vectors = intermediate_vectors(t)
        if t.state == TrialState.COMPLETE:
            assert sorted(vectors) == list(range(epochs))
            assert vectors[epochs - 1] == pytest.approx(tuple(t.values))
        else:  # stopped at a rung, where it left the vector it competed with
            last = max(vectors)
            assert last in rungs and last < epochs - 1
            rung = sorted(rungs).index(last)
            assert t.system_attrs[f"{RUNG_PREFIX}{rung}"] == list(vectors[last])
            assert t.user_attrs[TELEMETRY_ATTR]["epochs_run"] == last + 1
    progress = read_progress(study, spec)
    assert progress.finished == 12 and progress.pruned == len(pruned)
    assert progress.outcome == "BudgetSpent"


def _run_two_runners(
    path: Path, spec: StudySpec, postgres_url: str, name: str, tmp_path: Path
) -> optuna.Study:
    """Two runner processes on the study file at ``path``, started before the study exists
    (so both take trials), run to the end; the study."""
    logs = [tmp_path / f"runner-{i}.log" for i in range(2)]
    procs, study = start_runners_together(
        path,
        postgres_url,
        name,
        logs,
        lambda: ensure_study(open_storage(postgres_url), name, spec),
    )
    finish(procs, logs)
    return study
