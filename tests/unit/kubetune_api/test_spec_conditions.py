"""Conditional parameters, constraints and the Auto sampler's rule, as the spec model sees them
(the API server's verdict on the same shapes: tests/e2e/test_spec_agreement.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_api.spec import (
    AUTO_GP_BUDGET,
    SpecError,
    StudySpec,
    choose_sampler,
    validate_spec_mapping,
)
from tests.harness.studies import spec_model, study_document

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "optimizer", "type": "Categorical", "choices": ["SGD", "Adam", 3]},
    {"name": "kind", "type": "Categorical", "choices": ["classic", "nesterov", "none"],
     "when": {"parameter": "optimizer", "in": ["SGD"]}},
    {"name": "momentum", "type": "Float", "low": "0", "high": "0.99",
     "when": {"parameter": "kind", "in": ["classic", "nesterov"]}},
    {"name": "layers", "type": "Int", "low": 1, "high": 5, "step": 2},
    {"name": "width_3", "type": "Int", "low": 8, "high": 64,
     "when": {"parameter": "layers", "in": [3, "5"]}},
]  # fmt: skip


def conditional(**changes: Any) -> StudySpec:
    return spec_model(searchSpace=copy.deepcopy(OPTIMIZERS), stages=None, **changes)


def errors(search_space: list[dict[str, Any]], **changes: Any) -> dict[str, str]:
    document = study_document(searchSpace=search_space, stages=None, **changes)
    with pytest.raises(SpecError) as caught:
        validate_spec_mapping(document["spec"])
    return {e.path: e.message for e in caught.value.errors}


def changed(index: int, **when: Any) -> list[dict[str, Any]]:
    space = copy.deepcopy(OPTIMIZERS)
    space[index]["when"] = when
    return space


def test_chained_conditions_decide_which_parameters_exist() -> None:
    spec = conditional()
    assert spec.active_params({"optimizer": "Adam", "kind": "classic", "momentum": 0.5}) == {
        "optimizer": "Adam"
    }
    assert spec.active_params({"optimizer": "SGD", "kind": "none", "momentum": 0.5}) == {
        "optimizer": "SGD",
        "kind": "none",
    }
    sgd = {"optimizer": "SGD", "kind": "nesterov", "momentum": 0.9, "layers": 5, "width_3": 8}
    assert spec.active_params(sgd) == sgd
    # An Int condition's values are integers, written as numbers or as text.
    assert "width_3" in spec.active_params({"layers": 3, "width_3": 8})
    assert "width_3" not in spec.active_params({"layers": 1, "width_3": 8})
    # A condition on an absent parameter does not hold: the chain falls with its first link.
    assert spec.active_params({"kind": "classic", "momentum": 0.5}) == {}
    assert spec.active_params({"unknown": 1}) == {}


@pytest.mark.parametrize(
    ("space", "path", "words"),
    [
        (changed(2, parameter="layers", **{"in": [1]}), "searchSpace[2].when.parameter",
         "listed before"),
        (changed(2, parameter="momentum", **{"in": [1]}), "searchSpace[2].when.parameter",
         "listed before"),
        (changed(4, parameter="depth", **{"in": [1]}), "searchSpace[4].when.parameter",
         "unknown parameter 'depth'"),
        (changed(4, parameter="momentum", **{"in": [1]}), "searchSpace[4].when.parameter",
         "Categorical or Int"),
        (changed(1, parameter="optimizer", **{"in": ["SGD", "sgd"]}), "searchSpace[1].when.in[1]",
         "one of the choices"),
        (changed(1, parameter="optimizer", **{"in": ["3"]}), "searchSpace[1].when.in[0]",
         "one of the choices"),
        (changed(4, parameter="layers", **{"in": [7]}), "searchSpace[4].when.in[0]",
         "within [1, 5]"),
        (changed(4, parameter="layers", **{"in": [2]}), "searchSpace[4].when.in[0]",
         "multiple of step 2"),
        (changed(4, parameter="layers", **{"in": ["2.5"]}), "searchSpace[4].when.in[0]",
         "must be an integer"),
        (changed(4, parameter="layers", **{"in": [3, 3]}), "searchSpace[4].when.in",
         "must not repeat"),
    ],
    ids=["after", "itself", "unknown", "float", "not-a-choice", "text-for-int-choice",
         "out-of-range", "off-grid", "not-integer", "repeated"],
)  # fmt: skip
def test_a_bad_condition_is_named_with_what_is_accepted(
    space: list[dict[str, Any]], path: str, words: str
) -> None:
    found = errors(space)
    assert words in found[f"spec.{path}"], found


def test_the_batch_size_cannot_be_conditional() -> None:
    space = [*copy.deepcopy(OPTIMIZERS), {"name": "batch_size", "type": "Categorical",
             "choices": [32, 64], "when": {"parameter": "optimizer", "in": ["SGD"]}}]  # fmt: skip
    assert "cannot be conditional" in errors(space)["spec.searchSpace[5].when"]


def test_a_point_may_not_set_a_parameter_its_own_values_make_inactive() -> None:
    points = [
        {"params": [{"name": "optimizer", "value": "Adam"}, {"name": "kind", "value": "none"}]}
    ]
    found = errors(copy.deepcopy(OPTIMIZERS), warmStart={"points": points})
    assert "inactive in this point" in found["spec.warmStart.points[0].params[1].name"]
    fine = [{"params": [{"name": "optimizer", "value": "SGD"}, {"name": "kind", "value": "none"}]}]
    conditional(warmStart={"points": fine})


def test_constraints_bound_their_metric_and_need_a_sampler_that_takes_them() -> None:
    space = copy.deepcopy(OPTIMIZERS)
    found = errors(
        space,
        constraints=[{"metric": "parameters"}, {"metric": "latency", "min": "5", "max": "1"}],
    )
    assert "set max, min or both" in found["spec.constraints[0]"]
    assert "must not be above max" in found["spec.constraints[1].min"]
    for sampler in ("Random", "QMC", "CMAES"):
        found = errors(
            space, constraints=[{"metric": "parameters", "max": "1"}], sampler={"type": sampler}
        )
        assert "takes no constraints" in found["spec.sampler.type"], found
    spec = conditional(constraints=[{"metric": "p", "max": "10"}, {"metric": "q", "min": "-1"}])
    assert spec.constraints is not None
    at_most, at_least = spec.constraints
    assert at_most.violation(4) == -6 and at_most.violation(12) == 2
    assert at_least.violation(0) == -1 and at_least.violation(-3) == 2
    assert at_most.describe() == "p <= 10" and at_least.describe() == "q >= -1"


NUMERIC = [{"name": "lr", "type": "Float", "low": "1e-4", "high": "1e-1", "scale": "Log"},
           {"name": "width", "type": "Int", "low": 8, "high": 64}]  # fmt: skip
CATEGORICAL = [*NUMERIC, {"name": "act", "type": "Categorical", "choices": ["relu", "gelu"]}]
TWO = [{"metric": "accuracy"}, {"metric": "parameters", "direction": "Minimize"}]
FOUR = [*TWO, {"metric": "f1"}, {"metric": "latency", "direction": "Minimize"}]


def auto(space: list[dict[str, Any]], trials: int, **changes: Any) -> tuple[str, str]:
    spec = spec_model(
        searchSpace=copy.deepcopy(space),
        stages=None,
        budget={"maxTrials": trials},
        sampler={"seed": 1},
        **changes,
    )
    choice = choose_sampler(spec)
    return choice.type, choice.reason


BIG = AUTO_GP_BUDGET + 1


@pytest.mark.parametrize(
    ("space", "trials", "changes", "expected", "why"),
    [
        (OPTIMIZERS, 20, {}, "TPE", "conditional"),
        (OPTIMIZERS, BIG, {"objective": None, "objectives": TWO}, "TPE", "conditional"),
        (CATEGORICAL, 20, {}, "TPE", "Categorical parameter 'act'"),
        (CATEGORICAL, BIG, {}, "TPE", "Categorical parameter 'act'"),
        (NUMERIC, AUTO_GP_BUDGET, {}, "GP", "numeric parameters only"),
        (NUMERIC, BIG, {}, "CMAES", "numeric parameters only"),
        (NUMERIC, BIG, {"constraints": [{"metric": "p", "max": "1"}]}, "TPE", "constraints"),
        (NUMERIC, 20, {"constraints": [{"metric": "p", "max": "1"}]}, "GP", "numeric"),
        (NUMERIC, 20, {"objective": None, "objectives": TWO}, "GP", "numeric parameters only"),
        (CATEGORICAL, 20, {"objective": None, "objectives": TWO}, "TPE", "Categorical"),
        (NUMERIC, 20, {"objective": None, "objectives": FOUR}, "TPE", "4 objectives or more"),
        (CATEGORICAL, BIG, {"objective": None, "objectives": TWO}, "NSGAII", "several"),
        (NUMERIC, BIG, {"objective": None, "objectives": FOUR}, "NSGAIII", "several"),
    ],
    ids=["conditional", "conditional-several", "categorical", "categorical-large", "numeric-gp",
         "numeric-cmaes", "constrained-large", "constrained-small", "several-gp",
         "several-categorical", "four-objectives", "several-large", "four-large"],
)  # fmt: skip
def test_auto_picks_by_the_documented_rule(
    space: list[dict[str, Any]], trials: int, changes: dict[str, Any], expected: str, why: str
) -> None:
    kind, reason = auto(space, trials, **changes)
    assert kind == expected
    assert reason.startswith("Auto:") and why in reason, reason


def test_auto_is_the_default_and_a_named_sampler_is_kept() -> None:
    assert spec_model(sampler=None).sampler.type == "Auto"
    choice = choose_sampler(spec_model(sampler={"type": "Random"}))
    assert (choice.type, choice.reason) == ("Random", "set in spec.sampler.type")
