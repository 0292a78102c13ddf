"""MO-ASHA: the rung's ranking (pure), and the pruner on real Optuna studies and storages."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from kubetune_api.spec import Objective
from kubetune_study.mo_pruning import (
    RUNG_PREFIX,
    IntermediateVectors,
    MOASHAPruner,
    crowding_distances,
    intermediate_vectors,
    kept_at_rung,
    non_dominated_fronts,
)

TWO = (
    Objective(metric="accuracy", direction="Maximize"),
    Objective(metric="size", direction="Minimize"),
)


def test_fronts_peel_the_non_dominated_points_best_first() -> None:
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (2, 2), (6, 6)]
    assert non_dominated_fronts(points) == [[0, 1, 2, 5], [3], [4], [6]]
    assert non_dominated_fronts([]) == []


def test_fronts_beyond_the_kept_points_need_not_be_sorted() -> None:
    points = [(float(i), float(-i)) for i in range(5)] + [(9.0, 9.0), (10.0, 10.0)]
    assert non_dominated_fronts(points, n_below=5)[0] == [0, 1, 2, 3, 4]
    assert kept_at_rung(points, [False, False], 6) == [0, 1, 2, 3, 4, 5]


def test_crowding_distance_keeps_the_extremes_and_favours_isolated_points() -> None:
    points = [(0.0, 10.0), (1.0, 9.0), (2.0, 8.5), (6.0, 4.0), (10.0, 0.0)]
    distances = crowding_distances(points, [0, 1, 2, 3, 4])
    assert distances[0] == distances[4] == math.inf
    # (6, 4) has the widest gap between its neighbours; (1, 9) the narrowest.
    assert distances[3] > distances[2] > distances[1]
    assert crowding_distances(points, [1, 3]) == [math.inf, math.inf]


def test_a_rung_keeps_whole_fronts_then_cuts_the_next_by_crowding() -> None:
    # Accuracy (maximised), size (minimised).
    points = [(0.90, 100), (0.95, 500), (0.80, 50), (0.85, 400), (0.70, 600), (0.92, 300)]
    # Front 1: 0, 1, 2, 5 (none better in both); front 2: 3; front 3: 4.
    assert sorted(kept_at_rung(points, [True, False], 4)) == [0, 1, 2, 5]
    assert sorted(kept_at_rung(points, [True, False], 5)) == [0, 1, 2, 3, 5]
    # Two of the first front: its extremes (the most accurate, the smallest) go on.
    assert sorted(kept_at_rung(points, [True, False], 2)) == [1, 2]


def test_directions_decide_what_dominates() -> None:
    points = [(0.9, 100.0), (0.8, 200.0)]
    assert kept_at_rung(points, [True, False], 1) == [0]  # more accurate and smaller
    assert kept_at_rung(points, [False, True], 1) == [1]  # less "loss" and more "throughput"
    # Both maximised: neither dominates; equal (infinite) distances keep the first.
    assert kept_at_rung(points, [True, True], 1) == [0]


def study_of_two(storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    return optuna.create_study(
        study_name="mo",
        storage=storage,
        directions=["maximize", "minimize"],
        pruner=MOASHAPruner(min_resource=1, reduction_factor=2),
        load_if_exists=True,
    )


def run_steps(study: optuna.Study, curve: list[tuple[float, float]]) -> optuna.Trial:
    """A trial that reports ``curve`` step by step until the pruner stops it; left running."""
    trial = study.ask()
    vectors = IntermediateVectors(trial, TWO)
    for step, vector in enumerate(curve):
        vectors.report_vector(vector, step)
        if vectors.should_prune():
            break
    return trial


def test_the_pruner_stops_a_dominated_trial_at_its_rung() -> None:
    study = study_of_two()
    good = run_steps(study, [(0.5, 100), (0.8, 100), (0.9, 100), (0.95, 100)])
    study.tell(good, [0.95, 100])
    # Rung 0 at step 1 (min_resource 1), rung 1 at step 2: two trials keep one at each.
    bad = run_steps(study, [(0.4, 200), (0.6, 200), (0.7, 200), (0.8, 200)])
    frozen = study._storage.get_trial(bad._trial_id)
    assert max(intermediate_vectors(frozen)) == 1  # pruned at the first rung, step 1
    assert frozen.system_attrs[f"{RUNG_PREFIX}0"] == [0.6, 200]
    # A trial the good one does not dominate goes on through the rungs.
    small = run_steps(study, [(0.3, 10), (0.5, 10), (0.6, 10), (0.7, 10)])
    frozen = study._storage.get_trial(small._trial_id)
    assert sorted(intermediate_vectors(frozen)) == [0, 1, 2, 3]
    assert {f"{RUNG_PREFIX}0", f"{RUNG_PREFIX}1"} <= frozen.system_attrs.keys()


def test_each_step_is_written_once_and_nan_is_pruned_at_a_rung() -> None:
    study = study_of_two()
    trial = study.ask()
    vectors = IntermediateVectors(trial, TWO)
    vectors.report_vector((0.5, 10), 0)
    vectors.report_vector((0.9, 10), 0)  # a step again (an OOM retry of the fold): ignored
    assert intermediate_vectors(study._storage.get_trial(trial._trial_id)) == {0: (0.5, 10.0)}
    vectors.report_vector((math.nan, 10), 1)
    assert vectors.should_prune()


def test_failed_trials_do_not_compete_at_a_rung() -> None:
    study = study_of_two()
    failed = run_steps(study, [(0.9, 10), (0.99, 10)])
    study.tell(failed, state=TrialState.FAIL)
    # Alone at the rung once the failed trial is left out: it goes on.
    weak = run_steps(study, [(0.1, 500), (0.2, 500), (0.3, 500)])
    assert max(intermediate_vectors(study._storage.get_trial(weak._trial_id))) == 2


def test_rungs_live_in_the_storage_across_runners_and_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.log")
    # One runner process: two trials through the first rungs.
    first = study_of_two(JournalStorage(JournalFileBackend(path)))
    for _ in range(2):
        trial = run_steps(first, [(0.5, 100), (0.9, 100), (0.95, 100)])
        first.tell(trial, [0.95, 100])
    # Another runner (a new storage client, a new pruner): the earlier rungs are its
    # competition, so a dominated trial is stopped at the first rung.
    second = study_of_two(JournalStorage(JournalFileBackend(path)))
    assert second.pruner is not first.pruner
    bad = run_steps(second, [(0.4, 200), (0.6, 200), (0.7, 200)])
    assert max(intermediate_vectors(second._storage.get_trial(bad._trial_id))) == 1
    # A retry that carries the system attributes of its first run resumes at its next rung.
    retry = second.ask()
    storage = second._storage
    for key, value in storage.get_trial(bad._trial_id).system_attrs.items():
        storage.set_trial_system_attr(retry._trial_id, key, value)
    vectors = IntermediateVectors(retry, TWO)
    vectors.report_vector((0.0, 999), 1)  # already carried: kept as it was
    assert intermediate_vectors(storage.get_trial(retry._trial_id))[1] == (0.6, 200.0)


@pytest.mark.parametrize(("min_resource", "factor"), [(0, 3), (1, 1)])
def test_the_pruner_refuses_a_resource_or_factor_out_of_range(
    min_resource: int, factor: int
) -> None:
    with pytest.raises(ValueError, match="must be at least"):
        MOASHAPruner(min_resource=min_resource, reduction_factor=factor)
