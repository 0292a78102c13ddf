"""The pruning defaults kubetune chooses from the schedule: report cadence and halving rungs."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from kubetune_api.spec import StudySpec, study_from_mapping
from kubetune_study.pruning import (
    FEW_FOLDS,
    REDUCTION_FACTOR,
    describe,
    halving_resources,
    max_epochs,
    report_every,
)
from kubetune_study.search import build_pruner, max_pruning_steps
from tests.harness.studies import study_document

STEPWISE = ["Median", "Percentile", "Hyperband", "SuccessiveHalving"]


def spec(pruner: dict[str, Any], **training: Any) -> StudySpec:
    if pruner["type"] == "Percentile":
        pruner = {"percentile": "25", **pruner}
    doc = study_document(pruner=pruner, training=training, stages=None)
    return study_from_mapping(doc).spec


def test_auto_is_the_default_cadence() -> None:
    assert spec({"type": "Nop"}).training.report_every == "Auto"


@pytest.mark.parametrize("pruner", STEPWISE)
def test_auto_reports_epochs_of_few_folds_to_a_stepwise_pruner(pruner: str) -> None:
    for folds in range(1, FEW_FOLDS):
        assert report_every(spec({"type": pruner}, folds=folds, epochs=4)) == "Epoch"
    assert report_every(spec({"type": pruner}, folds=FEW_FOLDS, epochs=4)) == "Fold"
    assert report_every(spec({"type": pruner}, folds=10, epochs=4)) == "Fold"


@pytest.mark.parametrize("pruner", ["Nop", "Wilcoxon"])
def test_auto_reports_folds_where_no_pruner_reads_epochs(pruner: str) -> None:
    assert report_every(spec({"type": pruner}, folds=2, epochs=8)) == "Fold"


def test_auto_reports_folds_of_one_epoch_unless_the_schedule_grows() -> None:
    one = spec({"type": "Hyperband"}, folds=3, epochs=1)
    assert (max_epochs(one), report_every(one)) == (1, "Fold")
    grows = spec(
        {"type": "Hyperband"},
        folds=3,
        epochs=1,
        epochSchedule=[{"fromTrial": 0, "epochs": 1}, {"fromTrial": 10, "epochs": 5}],
    )
    assert (max_epochs(grows), report_every(grows)) == (5, "Epoch")


@pytest.mark.parametrize("given", ["Fold", "Epoch"])
def test_a_given_cadence_keeps_its_meaning(given: str) -> None:
    for pruner, folds in (("Hyperband", 2), ("Median", 10), ("Nop", 2), ("Wilcoxon", 3)):
        assert report_every(spec({"type": pruner}, folds=folds, reportEvery=given)) == given


def test_pruning_steps_follow_the_resolved_cadence() -> None:
    assert max_pruning_steps(spec({"type": "Hyperband"}, folds=3, epochs=4)) == 12
    assert max_pruning_steps(spec({"type": "Hyperband"}, folds=6, epochs=4)) == 6
    assert max_pruning_steps(spec({"type": "Nop"}, folds=3, epochs=4)) == 3


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(1, (1, 3)), (8, (1, 3)), (9, (1, 3)), (12, (1, 3)), (18, (2, 3)), (30, (3, 3)),
     (100, (11, 3)), (1000, (111, 3))],
)  # fmt: skip
def test_the_first_rung_comes_after_a_ninth_of_the_steps(
    steps: int, expected: tuple[int, int]
) -> None:
    assert halving_resources(steps, None, None) == expected


def test_given_resources_are_kept_and_a_given_factor_sets_the_first_rung() -> None:
    assert halving_resources(30, 4, 2) == (4, 2)
    assert halving_resources(30, 4, None) == (4, REDUCTION_FACTOR)
    assert halving_resources(30, None, 2) == (7, 2)  # 30 // 2²


def test_hyperband_keeps_at_most_three_brackets() -> None:
    counts = set()
    for steps in range(1, 5001):
        min_resource, eta = halving_resources(steps, None, None)
        max_resource = max(steps, 2)  # what build_pruner gives Hyperband
        # Optuna's count of Hyperband brackets (HyperbandPruner._try_initialization).
        counts.add(math.floor(math.log(max_resource / min_resource, eta)) + 1)
    assert counts == {1, 2, 3}


def test_hyperband_without_resources_is_built_from_the_schedule() -> None:
    hb = build_pruner(spec({"type": "Hyperband"}, folds=3, epochs=10))
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (3, 30, 3)
    given = build_pruner(
        spec(
            {"type": "Hyperband", "minResource": 1, "reductionFactor": 2, "maxResource": 9},
            folds=3,
            epochs=10,
        )
    )
    assert isinstance(given, optuna.pruners.HyperbandPruner)
    assert (given._min_resource, given._max_resource, given._reduction_factor) == (1, 9, 2)


def test_successive_halving_without_resources_is_built_from_the_schedule() -> None:
    sh = build_pruner(spec({"type": "SuccessiveHalving"}, folds=2, epochs=20))
    assert isinstance(sh, optuna.pruners.SuccessiveHalvingPruner)
    assert (sh._min_resource, sh._reduction_factor) == (4, 3)  # 40 steps // 9
    over_folds = build_pruner(spec({"type": "SuccessiveHalving"}, folds=10, epochs=20))
    assert isinstance(over_folds, optuna.pruners.SuccessiveHalvingPruner)
    assert over_folds._min_resource == 1


def test_the_runner_says_which_schedule_it_chose() -> None:
    hb = spec({"type": "Hyperband"}, folds=3, epochs=4)
    assert describe(hb, max_pruning_steps(hb)) == (
        "pruner Hyperband over 12 epoch steps a trial, minResource 1, reductionFactor 3, "
        "maxResource 12 (reportEvery Auto: Epoch)"
    )
    sh = spec({"type": "SuccessiveHalving", "minResource": 2}, folds=6, reportEvery="Fold")
    assert describe(sh, max_pruning_steps(sh)) == (
        "pruner SuccessiveHalving over 6 fold steps a trial, minResource 2, reductionFactor 3"
    )
    wilcoxon = spec({"type": "Wilcoxon"}, folds=3, epochs=4, reportEvery="Epoch")
    assert describe(wilcoxon, max_pruning_steps(wilcoxon)) == (
        "pruner Wilcoxon over 3 fold steps a trial"
    )
