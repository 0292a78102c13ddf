"""Search spaces, samplers and pruners come from the spec as Optuna's own classes."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kubetune_api.spec import StudySpec, study_from_mapping
from kubetune_study.mo_pruning import IntermediateVectors, MOASHAPruner
from kubetune_study.search import (
    build_pruner,
    build_sampler,
    default_value,
    distribution,
    fixed_params_for_stage,
    in_distribution,
    max_pruning_steps,
    point_params,
    step_reporter,
    suggest_all,
)
from tests.harness.studies import study_document as base


def spec_with(**changes: Any) -> StudySpec:
    doc = base()
    doc["spec"].update(changes)
    return study_from_mapping(doc).spec


def test_distributions_follow_the_spec() -> None:
    spec = spec_with()
    lr, bs, hidden = (distribution(p) for p in spec.search_space)
    assert lr == FloatDistribution(1e-4, 1e-1, log=True)
    assert bs == CategoricalDistribution([32, 64])
    assert hidden == IntDistribution(16, 128)
    stepped = spec_with(
        searchSpace=[{"name": "x", "type": "Float", "low": "0", "high": "1", "step": "0.25"}],
        stages=None,
    )
    assert distribution(stepped.search_space[0]) == FloatDistribution(0, 1, step=0.25)


def test_defaults_are_declared_or_central() -> None:
    spec = spec_with()
    assert default_value(spec.search_space[2]) == 64
    assert default_value(spec.search_space[1]) == 32
    assert default_value(spec.search_space[0]) == pytest.approx((1e-4 * 1e-1) ** 0.5)


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ({"type": "TPE", "seed": 1}, optuna.samplers.TPESampler),
        ({"type": "Random", "seed": 1}, optuna.samplers.RandomSampler),
        ({"type": "CMAES", "seed": 1}, optuna.samplers.CmaEsSampler),
        ({"type": "GP", "seed": 1}, optuna.samplers.GPSampler),
        ({"type": "QMC", "seed": 1}, optuna.samplers.QMCSampler),
    ],
)
def test_samplers_are_optunas_own(sampler: dict[str, Any], cls: type) -> None:
    spec = spec_with(sampler=sampler)
    assert isinstance(build_sampler(spec), cls)


def test_tpe_uses_constant_liar_and_seed_offsets_differ() -> None:
    spec = spec_with(sampler={"type": "TPE", "seed": 3})
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar is True

    def first_value(offset: int) -> float:
        study = optuna.create_study(sampler=build_sampler(spec, seed_offset=offset))
        trial = study.ask()
        return trial.suggest_float("x", 0, 1)

    assert first_value(0) == first_value(0)  # reproducible
    assert first_value(0) != first_value(1)  # parallel runners do not draw the same values


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"type": "Nop"}, optuna.pruners.NopPruner),
        ({"type": "Median"}, optuna.pruners.MedianPruner),
        ({"type": "Percentile", "percentile": "25"}, optuna.pruners.PercentilePruner),
        ({"type": "Hyperband"}, optuna.pruners.HyperbandPruner),
        ({"type": "SuccessiveHalving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"type": "Wilcoxon", "pThreshold": "0.05"}, optuna.pruners.WilcoxonPruner),
        ({"type": "Median", "patience": 2}, optuna.pruners.PatientPruner),
        ({"type": "Wilcoxon", "patience": 1, "minDelta": "0.01"}, optuna.pruners.PatientPruner),
    ],
)
def test_pruners_are_optunas_own(pruner: dict[str, Any], cls: type) -> None:
    spec = spec_with(pruner=pruner)
    assert isinstance(build_pruner(spec), cls)


def test_moasha_is_built_from_the_spec_its_first_rung_at_a_third_of_the_steps() -> None:
    two = [
        {"metric": "accuracy", "direction": "Maximize"},
        {"metric": "parameters", "direction": "Minimize"},
    ]
    default = build_pruner(spec_with(objective=None, objectives=two, pruner={"type": "MOASHA"}))
    assert isinstance(default, MOASHAPruner)
    assert (default.min_resource, default.reduction_factor) == (1, 3)  # 1 fold: 1 step
    # By default the first rung is at a third of the steps (step 9 of 27 epochs).
    epochs = build_pruner(
        spec_with(
            objective=None,
            objectives=two,
            pruner={"type": "MOASHA"},
            training={"folds": 3, "epochs": 9, "reportEvery": "Epoch"},
        )
    )
    assert isinstance(epochs, MOASHAPruner)
    assert (epochs.min_resource, epochs.reduction_factor) == (9, 3)
    given = build_pruner(
        spec_with(
            objective=None,
            objectives=two,
            pruner={"type": "MOASHA", "minResource": 2, "reductionFactor": 2},
        )
    )
    assert isinstance(given, MOASHAPruner)
    assert (given.min_resource, given.reduction_factor) == (2, 2)


def test_a_trial_of_several_objectives_reports_its_vectors_one_objective_the_trial() -> None:
    single = optuna.create_study().ask()
    assert step_reporter(single, spec_with()) is single
    two = [
        {"metric": "accuracy", "direction": "Maximize"},
        {"metric": "parameters", "direction": "Minimize"},
    ]
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    vectors = step_reporter(trial, spec_with(objective=None, objectives=two))
    assert isinstance(vectors, IntermediateVectors)
    assert vectors.metrics == ("accuracy", "parameters")


def test_hyperband_resource_is_folds_or_epochs() -> None:
    folds = spec_with(pruner={"type": "Hyperband"}, training={"folds": 5, "epochs": 4})
    assert max_pruning_steps(folds) == 5
    hb = build_pruner(folds)
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert hb._max_resource == 5
    epochs = spec_with(
        pruner={"type": "Hyperband"},
        training={
            "folds": 2,
            "epochs": 4,
            "reportEvery": "Epoch",
            "epochSchedule": [{"fromTrial": 0, "epochs": 2}, {"fromTrial": 5, "epochs": 6}],
        },
    )
    assert max_pruning_steps(epochs) == 12
    # Wilcoxon compares per-fold scores, whatever the report cadence.
    wilcoxon = spec_with(pruner={"type": "Wilcoxon"}, training={"folds": 3, "reportEvery": "Epoch"})
    assert max_pruning_steps(wilcoxon) == 3


def test_later_stages_fix_earlier_best_and_defaults() -> None:
    doc = base()
    doc["spec"]["searchSpace"].append(
        {
            "name": "dropout",
            "type": "Float",
            "low": "0",
            "high": "0.5",
            "group": "Regular",
            "default": "0.1",
        }
    )
    doc["spec"]["stages"] = [
        {"groups": ["Critical"], "trials": 3},
        {"groups": ["Model"], "trials": 3},
        {"groups": ["Regular"]},
    ]
    spec = study_from_mapping(doc).spec
    assert fixed_params_for_stage(spec, 0, None) == {"hidden_size": 64, "dropout": 0.1}
    best = {"learning_rate": 0.01, "batch_size": 64, "hidden_size": 64, "dropout": 0.1}
    assert fixed_params_for_stage(spec, 1, best) == {
        "learning_rate": 0.01,
        "batch_size": 64,
        "dropout": 0.1,
    }
    best2 = {"learning_rate": 0.01, "batch_size": 64, "hidden_size": 100, "dropout": 0.1}
    assert fixed_params_for_stage(spec, 2, best2) == {
        "learning_rate": 0.01,
        "batch_size": 64,
        "hidden_size": 100,
    }


def test_partial_fixed_sampler_answers_fixed_parameters() -> None:
    spec = spec_with()
    sampler = build_sampler(spec, fixed=fixed_params_for_stage(spec, 0, None))
    study = optuna.create_study(sampler=sampler)
    for _ in range(3):
        trial = study.ask()
        params = suggest_all(trial, spec)
        assert params["hidden_size"] == 64
        assert 1e-4 <= params["learning_rate"] <= 1e-1
        study.tell(trial, 0.5)


# --------------------------------------------------------------------------- several objectives

TWO_OBJECTIVES = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


@pytest.mark.parametrize("kind", ["TPE", "NSGAII", "NSGAIII", "Random", "GP", "QMC"])
def test_every_accepted_sampler_optimises_two_objectives_in_optuna(kind: str) -> None:
    """A real two-objective Optuna study, staged like the runner's (a sampler per trial)."""
    population = {"populationSize": 4} if kind.startswith("NSGA") else {}
    spec = spec_with(
        objective=None,
        objectives=TWO_OBJECTIVES,
        stages=None,
        sampler={"type": kind, "seed": 3, "nStartupTrials": 2, **population},
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number in range(6):
        study.sampler = build_sampler(spec, seed_offset=number)
        trial = study.ask()
        params = suggest_all(trial, spec)
        study.tell(trial, [params["learning_rate"], float(params["hidden_size"])])
    assert len(study.best_trials) >= 1
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_cmaes_cannot_take_two_objectives_which_is_why_the_spec_refuses_it() -> None:
    study = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=build_sampler(spec_with(sampler={"type": "CMAES"})),
    )
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)


def test_nsga_samplers_take_the_population_size() -> None:
    for kind, cls in (
        ("NSGAII", optuna.samplers.NSGAIISampler),
        ("NSGAIII", optuna.samplers.NSGAIIISampler),
    ):
        sampler = build_sampler(spec_with(sampler={"type": kind, "populationSize": 6}))
        assert isinstance(sampler, cls) and sampler._population_size == 6


# --------------------------------------------------------------------------- warm-start values


def test_in_distribution_is_optunas_own_test() -> None:
    log = FloatDistribution(1e-4, 1e-1, log=True)
    assert in_distribution(log, 1e-3) == (True, 1e-3)
    assert in_distribution(log, 0.5) == (False, None)
    assert in_distribution(IntDistribution(16, 128, step=16), 32.0) == (True, 32)
    assert in_distribution(IntDistribution(16, 128, step=16), 40) == (False, None)
    assert in_distribution(CategoricalDistribution([32, 64]), 64) == (True, 64)
    assert in_distribution(CategoricalDistribution([32, 64]), "64") == (False, None)
    assert in_distribution(FloatDistribution(0, 1), "relu") == (False, None)


def test_points_become_parameters_of_their_types() -> None:
    spec = spec_with(
        warmStart={
            "points": [
                {
                    "params": [
                        {"name": "learning_rate", "value": "3e-3"},
                        {"name": "batch_size", "value": 64},
                    ]
                }
            ]
        },
    )
    assert spec.warm_start is not None and spec.warm_start.points is not None
    params = point_params(spec, spec.warm_start.points[0])
    assert params == {"learning_rate": 0.003, "batch_size": 64}
    assert isinstance(params["learning_rate"], float)
