"""The spec's several objectives and warm start: what is accepted, and every invalid
combination named by its field path."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.spec import SpecError, best_first_key, study_from_mapping
from tests.harness.studies import spec_model, study_document

TWO = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


def multi(**spec: Any) -> dict[str, Any]:
    """The helpers' base study with two objectives instead of one."""
    return study_document(**{"objective": None, "objectives": TWO, **spec})


def point(**params: Any) -> dict[str, Any]:
    return {"params": [{"name": k, "value": v} for k, v in params.items()]}


def test_several_objectives_are_ordered_and_the_first_is_primary() -> None:
    spec = study_from_mapping(multi()).spec
    assert spec.multi_objective
    assert [o.metric for o in spec.all_objectives] == ["accuracy", "parameters"]
    assert spec.directions == ("Maximize", "Minimize")
    assert spec.primary_objective.metric == "accuracy"
    single = spec_model()
    assert not single.multi_objective
    assert single.all_objectives == (single.objective,) and single.directions == ("Maximize",)


def test_every_sampler_that_takes_several_objectives_is_accepted() -> None:
    for sampler in ("TPE", "NSGAII", "NSGAIII", "Random", "GP", "QMC"):
        assert study_from_mapping(multi(sampler={"type": sampler})).spec.multi_objective
    nsga = study_from_mapping(multi(sampler={"type": "NSGAII", "populationSize": 8})).spec
    assert nsga.sampler.population_size == 8


def test_moasha_prunes_several_objectives_with_its_rungs() -> None:
    spec = study_from_mapping(
        multi(pruner={"type": "MOASHA", "minResource": 2, "reductionFactor": 4})
    ).spec
    assert (spec.pruner.type, spec.pruner.min_resource, spec.pruner.reduction_factor) == (
        "MOASHA",
        2,
        4,
    )
    # Every pruner of one objective is still refused with several.
    for single in ("Median", "Hyperband", "SuccessiveHalving", "Wilcoxon"):
        with pytest.raises(SpecError, match="must be Nop or MOASHA"):
            study_from_mapping(multi(pruner={"type": single, "pThreshold": "0.1"}))


def test_lexicographic_order_breaks_ties_by_the_next_objective() -> None:
    directions = ("Maximize", "Minimize")
    ranked = sorted(
        [(0.9, 500.0), (0.95, 900.0), (0.95, 300.0)], key=lambda v: best_first_key(directions, v)
    )
    assert ranked == [(0.95, 300.0), (0.95, 900.0), (0.9, 500.0)]


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, the document, the path an error must name, words of its message)
    (
        "objective-and-objectives",
        study_document(objectives=TWO),
        "spec.objectives",
        "mutually exclusive with spec.objective",
    ),
    ("no-objective", study_document(objective=None), "spec.objective", "required"),
    ("one-of-several", multi(objectives=TWO[:1]), "spec.objectives", "at least 2"),
    (
        "repeated-metric",
        multi(objectives=[TWO[0], {"metric": "accuracy", "direction": "Minimize"}]),
        "spec.objectives[1].metric",
        "duplicate metric 'accuracy'",
    ),
    ("cmaes", multi(sampler={"type": "CMAES"}), "spec.sampler.type", "cannot optimise several"),
    ("pruner", multi(pruner={"type": "Median"}), "spec.pruner.type", "must be Nop or MOASHA"),
    (
        "moasha-of-one-objective",
        study_document(pruner={"type": "MOASHA"}),
        "spec.pruner.type",
        "MOASHA prunes studies of several objectives",
    ),
    (
        "moasha-with-patience",
        multi(pruner={"type": "MOASHA", "patience": 2}),
        "spec.pruner.patience",
        "not accepted",
    ),
    ("patience", multi(pruner={"patience": 2}), "spec.pruner.patience", "not accepted"),
    (
        "population-for-tpe",
        study_document(sampler={"type": "TPE", "populationSize": 4}),
        "spec.sampler.populationSize",
        "only used by the NSGAII and NSGAIII",
    ),
    ("empty-warm-start", study_document(warmStart={}), "spec.warmStart", "set points, fromStudy"),
    (
        "unknown-parameter",
        study_document(warmStart={"points": [point(learning_rat="1e-3")]}),
        "spec.warmStart.points[0].params[0].name",
        "'learning_rat' is not a searchSpace parameter",
    ),
    (
        "value-above-high",
        study_document(warmStart={"points": [point(learning_rate="0.5")]}),
        "spec.warmStart.points[0].params[0].value",
        "within [1e-4, 1e-1]",
    ),
    (
        "not-a-number",
        study_document(warmStart={"points": [point(learning_rate="fast")]}),
        "spec.warmStart.points[0].params[0].value",
        "must be a number",
    ),
    (
        "not-a-choice",
        study_document(warmStart={"points": [point(batch_size=48)]}),
        "spec.warmStart.points[0].params[0].value",
        "one of the choices",
    ),
    (
        "choice-as-text",
        study_document(warmStart={"points": [point(batch_size="32")]}),
        "spec.warmStart.points[0].params[0].value",
        "one of the choices",
    ),
    (
        "float-for-int",
        study_document(stages=None, warmStart={"points": [point(hidden_size="32.5")]}),
        "spec.warmStart.points[0].params[0].value",
        "integer",
    ),
    (
        "off-step",
        study_document(
            stages=None,
            searchSpace=[{"name": "x", "type": "Float", "low": "0", "high": "1", "step": "0.25"}],
            warmStart={"points": [point(x="0.3")]},
        ),
        "spec.warmStart.points[0].params[0].value",
        "multiple of step 0.25",
    ),
    (
        "later-stage-parameter",
        study_document(warmStart={"points": [point(hidden_size=32)]}),
        "spec.warmStart.points[0].params[0].name",
        "not searched in the first stage",
    ),
    (
        "repeated-parameter",
        study_document(
            warmStart={
                "points": [
                    {
                        "params": [
                            {"name": "learning_rate", "value": "1e-3"},
                            {"name": "learning_rate", "value": "2e-3"},
                        ]
                    }
                ]
            }
        ),
        "spec.warmStart.points[0].params[1].name",
        "duplicate parameter",
    ),
    (
        "points-beyond-the-first-stage",
        study_document(warmStart={"points": [point(learning_rate="1e-3")] * 5}),
        "spec.warmStart",
        "do not fit in stages[0].trials (4)",
    ),
    (
        "points-beyond-the-budget",
        study_document(
            stages=None,
            budget={"maxTrials": 2},
            warmStart={
                "points": [point(learning_rate="1e-3")],
                "fromStudy": {"hpoStudy": "old", "mode": "Reevaluate", "topK": 2},
            },
        ),
        "spec.warmStart",
        "3 trials to evaluate first",
    ),
    (
        "two-sources",
        study_document(warmStart={"fromStudy": {"hpoStudy": "a", "studyName": "b"}}),
        "spec.warmStart.fromStudy",
        "exactly one of hpoStudy and studyName",
    ),
    (
        "no-source",
        study_document(warmStart={"fromStudy": {"mode": "AddTrials"}}),
        "spec.warmStart.fromStudy",
        "exactly one of hpoStudy and studyName",
    ),
    (
        "reevaluate-without-top-k",
        study_document(warmStart={"fromStudy": {"hpoStudy": "a", "mode": "Reevaluate"}}),
        "spec.warmStart.fromStudy.topK",
        "required when mode is Reevaluate",
    ),
    (
        "top-k-with-add-trials",
        study_document(warmStart={"fromStudy": {"hpoStudy": "a", "topK": 3}}),
        "spec.warmStart.fromStudy.topK",
        "only used when mode is Reevaluate",
    ),
    (
        "bad-mode",
        study_document(warmStart={"fromStudy": {"hpoStudy": "a", "mode": "Copy"}}),
        "spec.warmStart.fromStudy.mode",
        "'AddTrials' or 'Reevaluate'",
    ),
    (
        "hpo-study-not-a-name",
        study_document(warmStart={"fromStudy": {"hpoStudy": "Old_Study"}}),
        "spec.warmStart.fromStudy.hpoStudy",
        "DNS label",
    ),
]


@pytest.mark.parametrize(
    ("document", "path", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_combination_names_its_field(
    document: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SpecError) as info:
        study_from_mapping(document)
    matching = [str(e) for e in info.value.errors if e.path == path]
    assert matching, f"no error at {path}: {info.value.render()}"
    assert any(words in m for m in matching), info.value.render()


def test_warm_start_within_the_rules_is_accepted() -> None:
    spec = study_from_mapping(
        study_document(
            warmStart={
                "points": [point(learning_rate="3e-3", batch_size=64), point(learning_rate="1e-2")],
                "fromStudy": {"studyName": "team.old", "mode": "Reevaluate", "topK": 2},
            }
        )
    ).spec
    assert spec.warm_start is not None and spec.warm_start.points is not None
    assert [p.name for p in spec.warm_start.points[0].params] == ["learning_rate", "batch_size"]
    assert spec.warm_start.from_study is not None
    assert spec.warm_start.from_study.top_k == 2
    # AddTrials copies trials the budget does not count: no room needed for them.
    added = study_from_mapping(
        study_document(
            budget={"maxTrials": 4}, stages=None, warmStart={"fromStudy": {"hpoStudy": "old"}}
        )
    ).spec
    assert added.warm_start is not None and added.warm_start.from_study is not None
    assert added.warm_start.from_study.mode == "AddTrials"
