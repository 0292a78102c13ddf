"""Warm starts: what fits this search space is carried over, the rest named; applied once.

Studies live in a journal file in a temporary directory (no server); the integration tests
run the same on PostgreSQL with runner processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import ORIGIN_ATTR, PRIOR_ATTR, STAGE_ATTR, TELEMETRY_ATTR
from kubetune_api.spec import StudySpec
from kubetune_study.progress import BudgetState, summarize
from kubetune_study.storage import ensure_study, open_storage, read_progress, write_budget
from kubetune_study.warmstart import (
    WarmStartReport,
    apply_warm_start,
    carry,
    prior_values,
    queue_room,
    rank_for_reevaluation,
    recorded_report,
    source_study_name,
)
from tests.harness.studies import spec_model

#: The search space of the studies here: a narrower learning rate than the sources', no
#: dropout, hidden_size in steps of 16.
SPACE = [
    {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "1e-1", "scale": "Log"},
    {"name": "batch_size", "type": "Categorical", "choices": [32, 64]},
    {"name": "hidden_size", "type": "Int", "low": 16, "high": 128, "step": 16},
]
SOURCE_DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "hidden_size": IntDistribution(8, 128),
    "dropout": FloatDistribution(0.0, 0.5),
}
SOURCE_DISTRIBUTIONS_LR = {"learning_rate": SOURCE_DISTRIBUTIONS["learning_rate"]}


def spec(**changes: Any) -> StudySpec:
    return spec_model(
        **{"searchSpace": SPACE, "stages": None, "budget": {"maxTrials": 6}, **changes}
    )


def point(**params: Any) -> dict[str, Any]:
    return {"params": [{"name": k, "value": v} for k, v in params.items()]}


def source_trial(number: int, accuracy: float, **params: Any) -> FrozenTrial:
    """A complete trial as kubetune records it: its metrics in the telemetry attribute."""
    t = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=accuracy,
        params=params,
        distributions={k: SOURCE_DISTRIBUTIONS[k] for k in params},
        user_attrs={TELEMETRY_ATTR: {"metrics": {"accuracy": accuracy, "parameters": 1000.0}}},
    )
    t.number = number
    return t


# --------------------------------------------------------------------------- pure parts


def test_carry_keeps_values_of_this_space_and_names_the_rest() -> None:
    fits, dropped = carry(
        source_trial(0, 0.9, learning_rate=0.01, batch_size=64, hidden_size=32, dropout=0.1),
        spec(),
    )
    assert fits.compatible and fits.params == {
        "learning_rate": 0.01,
        "batch_size": 64,
        "hidden_size": 32,
    }
    assert dropped == {"dropout"}
    misfit, _ = carry(
        source_trial(1, 0.9, learning_rate=5e-4, batch_size=128, hidden_size=40), spec()
    )
    assert not misfit.compatible
    assert misfit.problems == (
        "learning_rate=0.0005 does not fit Float [1e-3, 1e-1] (Log)",
        "batch_size=128 is not one of the choices [32, 64]",
        "hidden_size=40 does not fit Int [16, 128] with step 16",
    )


def test_prior_values_come_from_the_recorded_metrics_or_the_metric_names() -> None:
    two = spec(
        objective=None,
        objectives=[
            {"metric": "accuracy", "direction": "Maximize"},
            {"metric": "parameters", "direction": "Minimize"},
        ],
    )
    recorded = source_trial(0, 0.9, learning_rate=0.01)
    assert prior_values(recorded, two, None) == [0.9, 1000.0]
    plain = optuna.trial.create_trial(
        value=0.8, params={"learning_rate": 0.01}, distributions=SOURCE_DISTRIBUTIONS_LR
    )
    assert prior_values(plain, spec(), ["accuracy"]) == [0.8]
    assert prior_values(plain, spec(), None) == "no value of 'accuracy' recorded"
    assert prior_values(plain, two, ["accuracy"]) == "no value of 'parameters' recorded"


def test_reevaluation_takes_the_best_first_by_the_sources_own_objectives() -> None:
    carried = [
        carry(source_trial(n, acc, learning_rate=0.01), spec())[0]
        for n, acc in [(0, 0.7), (1, 0.9), (2, 0.8)]
    ]
    misfit = carry(source_trial(3, 0.99, learning_rate=5e-4), spec())[0]
    ranked = rank_for_reevaluation([*carried, misfit], ["Maximize"])
    assert [c.trial.number for c in ranked] == [1, 2, 0]  # the incompatible best is left out
    assert [c.trial.number for c in rank_for_reevaluation(carried, ["Minimize"])] == [0, 2, 1]


def test_reevaluation_of_a_multi_objective_source_goes_front_first() -> None:
    def two(number: int, accuracy: float, size: float) -> Any:
        t = optuna.trial.create_trial(
            values=[accuracy, size],
            params={"learning_rate": 0.01},
            distributions=SOURCE_DISTRIBUTIONS_LR,
        )
        t.number = number
        return carry(t, spec())[0]

    # 0 and 2 are on the front; 1 is dominated by 2 although its accuracy beats 0's.
    carried = [two(0, 0.80, 100.0), two(1, 0.85, 900.0), two(2, 0.90, 500.0)]
    ranked = rank_for_reevaluation(carried, ["Maximize", "Minimize"])
    assert [c.trial.number for c in ranked] == [2, 0, 1]


def test_queue_room_is_what_the_budget_and_the_first_stage_leave() -> None:
    def progress(done: int, budget: BudgetState) -> Any:
        trials = []
        for n in range(done):
            t = optuna.trial.create_trial(
                value=0.5, params={}, distributions={}, user_attrs={STAGE_ATTR: 0}
            )
            t.number = n
            trials.append(t)
        return summarize(trials, budget, "Maximize")

    assert queue_room(progress(1, BudgetState(max_trials=6))) == 5
    staged = BudgetState(max_trials=6, stage_trials=(3, None))
    assert queue_room(progress(1, staged)) == 2
    assert queue_room(progress(3, staged)) == 0  # past the first stage


def test_report_reads_back_and_says_what_was_left_out() -> None:
    report = WarmStartReport(
        points=2,
        points_queued=1,
        points_over_budget=1,
        source="team.old",
        mode="AddTrials",
        source_trials=5,
        carried=3,
        incompatible_trials=2,
        incompatible=("trial 3: learning_rate=0.5 does not fit Float [1e-3, 1e-1]",),
        dropped_params=("dropout",),
    )
    assert WarmStartReport.from_attr(report.to_attr()) == report
    assert not report.complete
    text = report.summary()
    assert "1 of 2 point(s) queued (1 beyond the budget)" in text
    assert "3 trial(s) of study 'team.old' added as priors (5 complete there)" in text
    assert "2 incompatible trial(s) left out: trial 3: learning_rate=0.5" in text
    assert "and 1 more" in text
    assert "parameters not in this search space, dropped: dropout" in text


def test_source_names_follow_the_callers_naming() -> None:
    by_hpo = spec(warmStart={"fromStudy": {"hpoStudy": "old"}})
    assert source_study_name(by_hpo) == "old"
    assert source_study_name(by_hpo, lambda name: f"team.{name}") == "team.old"
    verbatim = spec(warmStart={"fromStudy": {"studyName": "anything at all"}})
    assert source_study_name(verbatim, lambda name: f"team.{name}") == "anything at all"
    assert source_study_name(spec()) is None


# --------------------------------------------------------------------------- applied to a study


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"journal:{tmp_path}/studies.journal"


def source_study(url: str, name: str = "old") -> optuna.Study:
    """A finished study of a wider search space: two trials fit this one, two do not."""
    study = ensure_study(open_storage(url), name, spec())
    study.add_trials(
        [
            source_trial(0, 0.90, learning_rate=0.01, batch_size=64, hidden_size=32, dropout=0.1),
            source_trial(1, 0.95, learning_rate=5e-4, batch_size=32, hidden_size=64),
            source_trial(2, 0.80, learning_rate=0.02, batch_size=32, hidden_size=48),
            source_trial(3, 0.70, learning_rate=0.05, batch_size=128, hidden_size=16),
        ]
    )
    return study


def prepared(url: str, name: str, study_spec: StudySpec, source: str | None = None) -> Any:
    study = ensure_study(open_storage(url), name, study_spec)
    return study, apply_warm_start(study, study_spec, url, source)


def test_points_are_queued_once_as_first_stage_trials(url: str) -> None:
    with_points = spec(
        warmStart={"points": [point(learning_rate="3e-3", batch_size=64), point(hidden_size=32)]}
    )
    study, report = prepared(url, "new", with_points)
    assert report is not None and (report.points, report.points_queued) == (2, 2)
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in queued] == [
        {"learning_rate": 0.003, "batch_size": 64},
        {"hidden_size": 32},
    ]
    assert [t.user_attrs[ORIGIN_ATTR] for t in queued] == ["point 0", "point 1"]
    assert all(t.user_attrs[STAGE_ATTR] == 0 for t in queued)
    # The preparer runs again (a restart, a second `kubetune run`, the operator's next pass).
    again, second = prepared(url, "new", with_points)
    assert second == report and len(again.get_trials()) == 2
    # They are claimed like any trial: counted in the budget, run before sampling.
    progress = read_progress(again, with_points)
    assert (progress.waiting, queue_room(progress)) == (2, 4)


def test_points_beyond_a_smaller_live_budget_are_reported_not_queued(url: str) -> None:
    three = spec(warmStart={"points": [point(hidden_size=h) for h in (16, 32, 48)]})
    study = ensure_study(open_storage(url), "small", three)
    write_budget(study, BudgetState(max_trials=2))  # kubetune run --trials 2
    report = apply_warm_start(study, three, url, None)
    assert report is not None and (report.points_queued, report.points_over_budget) == (2, 1)
    assert "1 beyond the budget" in report.summary()
    assert len(study.get_trials()) == 2


def test_added_trials_inform_the_sampler_and_are_named_when_they_do_not_fit(url: str) -> None:
    source_study(url)
    adding = spec(warmStart={"fromStudy": {"hpoStudy": "old"}})
    study, report = prepared(url, "new", adding, "old")
    assert report is not None
    assert (report.source_trials, report.carried, report.incompatible_trials) == (4, 2, 2)
    assert report.incompatible == (
        "trial 1: learning_rate=0.0005 does not fit Float [1e-3, 1e-1] (Log)",
        "trial 3: batch_size=128 is not one of the choices [32, 64]",
    )
    assert report.dropped_params == ("dropout",)
    priors = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs[PRIOR_ATTR] for t in priors) == ["old#0", "old#2"]
    assert {t.value for t in priors} == {0.90, 0.80}
    assert all("dropout" not in t.params for t in priors)
    # Samplers read them as complete trials; the study's own progress does not count them.
    progress = read_progress(study, adding)
    assert (progress.complete, progress.best_trial, queue_room(progress)) == (0, None, 6)
    assert recorded_report(study) == report


def test_an_edited_warm_start_adds_only_what_is_new(url: str) -> None:
    source_study(url)
    first = spec(warmStart={"points": [point(hidden_size=32)], "fromStudy": {"hpoStudy": "old"}})
    study, _ = prepared(url, "new", first, "old")
    edited = spec(
        warmStart={
            "points": [point(hidden_size=32), point(hidden_size=64)],
            "fromStudy": {"hpoStudy": "old"},
        }
    )
    _, report = prepared(url, "new", edited, "old")
    assert report is not None
    assert (report.points_queued, report.points_present, report.carried) == (1, 1, 0)
    assert sum(PRIOR_ATTR in t.user_attrs for t in study.get_trials()) == 2
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2


def test_reevaluation_queues_the_best_compatible_source_trials(url: str) -> None:
    source_study(url)
    again = spec(
        warmStart={"fromStudy": {"studyName": "old", "mode": "Reevaluate", "topK": 1}},
        stages=[{"groups": ["Critical"], "trials": 2}, {"groups": ["Critical", "Model"]}],
        searchSpace=[
            {**SPACE[0], "group": "Critical"},
            {**SPACE[1], "group": "Critical"},
            {**SPACE[2], "group": "Model", "default": 64},
        ],
    )
    study, report = prepared(url, "new", again, "old")
    assert report is not None and report.carried == 1
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    # Trial 0 is the best that fits; the first stage fixes hidden_size, not the source.
    assert queued.system_attrs["fixed_params"] == {"learning_rate": 0.01, "batch_size": 64}
    assert queued.user_attrs[ORIGIN_ATTR] == "old#0"


def test_a_missing_source_is_reported_and_the_study_goes_on(url: str) -> None:
    adding = spec(warmStart={"points": [point(hidden_size=32)], "fromStudy": {"hpoStudy": "x"}})
    study, report = prepared(url, "new", adding, "x")
    assert report is not None and report.source_missing and report.points_queued == 1
    assert "source study 'x' not found in the storage" in report.summary()
    assert len(study.get_trials()) == 1
    self_source = spec(warmStart={"fromStudy": {"studyName": "itself"}})
    _, own = prepared(url, "itself", self_source, "itself")
    assert own is not None and "cannot warm-start from itself" in own.summary()


def test_a_study_without_warm_start_is_left_alone(url: str) -> None:
    study, report = prepared(url, "plain", spec())
    assert report is None and recorded_report(study) is None
