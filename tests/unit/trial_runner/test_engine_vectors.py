"""A trial of several objectives reports its objective vectors per step to a real Optuna study
(through :class:`kubetune_study.mo_pruning.IntermediateVectors`), and MO-ASHA stops it."""

from __future__ import annotations

import json

import optuna
import pytest

from kubetune_api.spec import StudySpec
from kubetune_study.mo_pruning import IntermediateVectors, MOASHAPruner, intermediate_vectors
from tests.unit.trial_runner.test_engine import PARAMS, SizedBlobs, two_objectives
from trial_runner.engine import Engine, FoldRecord, folds_from_attr, folds_to_attr


def spec_of(**training: object) -> StudySpec:
    spec = two_objectives("parameters")
    return spec.model_copy(update={"training": spec.training.model_copy(update=training)})


def study_with(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)


def vectors_of(study: optuna.Study, trial: optuna.Trial) -> dict[int, tuple[float, ...]]:
    return intermediate_vectors(study._storage.get_trial(trial._trial_id))


def test_fold_steps_report_each_objectives_running_mean() -> None:
    spec = spec_of(folds=3, epochs=2)
    study = study_with(optuna.pruners.NopPruner())
    trial = study.ask()
    reporter = IntermediateVectors(trial, spec.all_objectives)
    kept: list[FoldRecord] = []
    result = Engine(SizedBlobs({}), spec).run_trial(
        PARAMS, trial_number=0, reporter=reporter, on_fold=kept.append
    )
    vectors = vectors_of(study, trial)
    assert sorted(vectors) == [0, 1, 2]
    # Each fold's record (what a retry replays) holds its own step's vector only.
    assert [r.vectors for r in kept] == [((0, vectors[0]),), ((1, vectors[1]),)]
    # The last step is the trial's final value of each objective: the mean over its folds.
    assert vectors[2] == pytest.approx((result.metrics["accuracy"], result.metrics["parameters"]))
    assert {v[1] for v in vectors.values()} == {result.metrics["parameters"]}
    assert not trial.storage.get_trial(trial._trial_id).intermediate_values  # no scalar reports


def test_epoch_steps_report_each_epochs_vector() -> None:
    spec = spec_of(folds=2, epochs=3, report_every="Epoch")
    study = study_with(optuna.pruners.NopPruner())
    trial = study.ask()
    reporter = IntermediateVectors(trial, spec.all_objectives)
    Engine(SizedBlobs({}), spec).run_trial(PARAMS, trial_number=0, reporter=reporter)
    assert sorted(vectors_of(study, trial)) == [0, 1, 2, 3, 4, 5]


def test_a_dominated_trial_is_stopped_at_its_first_rung() -> None:
    spec = spec_of(folds=4, epochs=2)
    study = study_with(MOASHAPruner(min_resource=1, reduction_factor=2))
    # A perfect, tiny model reached the first two rungs before.
    best = study.ask()
    perfect = IntermediateVectors(best, spec.all_objectives)
    for step in range(3):
        perfect.report_vector((1.0, 1.0), step)
        assert not perfect.should_prune()
    trial = study.ask()
    result = Engine(SizedBlobs({}), spec).run_trial(
        PARAMS, trial_number=1, reporter=IntermediateVectors(trial, spec.all_objectives)
    )
    assert result.pruned and result.stop_reason == "Pruned"
    assert result.telemetry["folds_run"] == 2  # rung 0 is at step 1: after the second fold
    assert sorted(vectors_of(study, trial)) == [0, 1]


def test_a_resumed_trial_replays_its_vectors_to_the_pruner() -> None:
    spec = spec_of(folds=3, epochs=1)
    study = study_with(MOASHAPruner(min_resource=1, reduction_factor=2))
    best = IntermediateVectors(study.ask(), spec.all_objectives)
    for step in range(2):
        best.report_vector((1.0, 1.0), step)
        best.should_prune()
    carried = [
        FoldRecord(f, 0.5, {"accuracy": 0.5, "parameters": 99.0}, 1, "Completed", (), v)
        for f, v in ((0, ((0, (0.5, 99.0)),)), (1, ((1, (0.5, 99.0)),)))
    ]
    # The records go through the attribute's JSON, as a retry reads them.
    resume = folds_from_attr(json.loads(json.dumps(folds_to_attr(carried))), folds=3)
    assert resume == tuple(carried)
    trial = study.ask()
    result = Engine(SizedBlobs({}), spec).run_trial(
        PARAMS,
        trial_number=1,
        reporter=IntermediateVectors(trial, spec.all_objectives),
        resume=resume,
    )
    assert result.pruned and result.telemetry["folds_run"] == 2  # both replayed, none trained
    assert result.model is None
    assert vectors_of(study, trial) == {0: (0.5, 99.0), 1: (0.5, 99.0)}


def test_records_of_one_objective_keep_their_json_and_read_without_vectors() -> None:
    record = FoldRecord(0, 0.9, {"accuracy": 0.9}, 2, "Completed", ((0, 0.9),))
    assert "vectors" not in record.to_json()
    vectored = FoldRecord(0, 0.9, {}, 1, "Completed", (), ((3, (0.9, 5.0)),))
    assert FoldRecord.from_json(vectored.to_json()).vectors == ((3, (0.9, 5.0)),)
