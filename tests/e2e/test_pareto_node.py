"""Several objectives and a warm start as users run them: studies applied with kubectl, the
chart's operator in a container, runner containers on the real node, PostgreSQL storage.

A two-objective study (accuracy against the model's parameter count) shows its Pareto front in
``kubectl get`` (the Front column), in its status and in the ``<study>-best`` ConfigMap; a
second study starts from the first one's results and says so in its WarmStarted condition.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kubetune_api.contract import ORIGIN_ATTR, PRIOR_ATTR
from tests.harness.node_fixtures import Database, Operator, on_node
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

STUDY_TIMEOUT = 600.0
OBJECTIVES = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


def _storage_study(database: Database, studies: StudyClient, name: str) -> optuna.Study:
    return optuna.load_study(study_name=f"{studies.namespace}.{name}", storage=database.url)


def _own_trials(study: optuna.Study) -> list[Any]:
    """The study's own trials: not those a warm start copied from another study."""
    return [t for t in study.get_trials() if PRIOR_ATTR not in t.user_attrs]


def test_front_in_status_configmap_and_columns_then_a_study_warm_starts_from_it(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    name = "front"
    study = on_node(small_cpu_study(name, max_trials=4, parallelism=1, epochs=1), test_images.image)
    spec = study["spec"]
    spec.pop("objective")
    spec["objectives"] = OBJECTIVES
    spec["sampler"] = {"type": "NSGAII", "seed": 0, "populationSize": 4}
    node_studies.apply(study)
    node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")

    stored = _storage_study(node_database, node_studies, name)
    trials = stored.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    expected = sorted(t.number for t in stored.best_trials)  # Optuna's own front

    # `kubectl get -o yaml`: the front's size and its trials (all of them: fewer than ten).
    got = yaml.safe_load(node_studies.kubectl("get", "hpostudy", name, "-o", "yaml").stdout)
    front = got["status"]["paretoFront"]
    assert front["size"] == len(expected)
    assert sorted(t["trial"] for t in front["trials"]) == expected
    by_number = {t.number: t for t in trials}
    for shown in front["trials"]:
        accuracy, parameters = by_number[shown["trial"]].values
        assert float(shown["values"]["accuracy"]) == pytest.approx(accuracy, rel=1e-5)
        assert float(shown["values"]["parameters"]) == parameters
        assert set(shown["params"]) == {p["name"] for p in spec["searchSpace"]}
    assert "best" not in got["status"]
    succeeded = node_studies.condition(name, "Succeeded")
    assert f"Pareto front of {len(expected)} trial(s)" in succeeded["message"]

    # `kubectl get hpostudies`: the Front column (Best is blank for two objectives).
    columns = node_studies.columns(name)
    assert columns["FRONT"] == str(len(expected)), columns
    assert columns["BEST"] == "", columns

    # The ConfigMap holds the whole front as YAML.
    configmap = node_studies.configmap(f"{name}-best")
    assert configmap is not None and configmap["size"] == str(len(expected))
    document = yaml.safe_load(configmap["front.yaml"])
    assert [o["metric"] for o in document["objectives"]] == ["accuracy", "parameters"]
    assert sorted(t["trial"] for t in document["trials"]) == expected
    events = node_studies.kubectl("get", "events", "--field-selector", "reason=ParetoFrontChanged")
    assert "trial(s):" in events.stdout

    # A second round starts from the first one's results: a point, and its trials as priors.
    again = "again"
    second = on_node(
        small_cpu_study(again, max_trials=2, parallelism=1, epochs=1), test_images.image
    )
    second["spec"]["warmStart"] = {
        "points": [
            {
                "params": [
                    {"name": "learning_rate", "value": "5e-3"},
                    {"name": "batch_size", "value": 64},
                ]
            }
        ],
        "fromStudy": {"hpoStudy": name, "mode": "AddTrials"},
    }
    node_studies.apply(json.dumps(second))
    node_studies.wait_condition(again, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    warm = node_studies.wait_condition(again, "WarmStarted", "True", 60, reason="Applied")
    source = f"{node_studies.namespace}.{name}"
    assert warm["message"].startswith("warm start: 1 of 1 point(s) queued; ")
    assert f"4 trial(s) of study '{source}' added as priors (4 complete there)" in warm["message"]

    second_stored = _storage_study(node_database, node_studies, again)
    priors = [t for t in second_stored.get_trials() if PRIOR_ATTR in t.user_attrs]
    assert sorted(str(t.user_attrs[PRIOR_ATTR]) for t in priors) == [
        f"{source}#{n}" for n in range(4)
    ]
    own = _own_trials(second_stored)
    # Exactly the budget of its own trials, the point among them once.
    assert [t.state for t in own] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.user_attrs.get(ORIGIN_ATTR) for t in own].count("point 0") == 1
    point = next(t for t in own if t.user_attrs.get(ORIGIN_ATTR) == "point 0")
    assert (point.params["learning_rate"], point.params["batch_size"]) == (5e-3, 64)
    status = (node_studies.study(again) or {})["status"]
    assert status["trialsSummary"] == "2/2"
