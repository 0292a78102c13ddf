"""The Pareto front: Optuna's dominance, one order for every reader, a bounded spread."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kubetune_study.pareto import ParetoPoint, front_document, pareto_front, spread
from tests.harness.studies import spec_model

DIRECTIONS = ("Maximize", "Minimize")  # accuracy up, parameters down


def scored(number: int, accuracy: float, size: float, state: TrialState = TrialState.COMPLETE):
    t: FrozenTrial = optuna.trial.create_trial(
        state=state,
        values=[accuracy, size] if state == TrialState.COMPLETE else None,
        params={"x": float(number)},
        distributions={"x": FloatDistribution(0, 100)},
    )
    t.number = number
    return t


def test_front_keeps_the_trials_no_other_beats_on_both() -> None:
    trials = [
        scored(0, 0.90, 1000),
        scored(1, 0.95, 5000),
        scored(2, 0.85, 2000),  # worse than 0 on both
        scored(3, 0.80, 100),
        scored(4, 0.95, 6000),  # worse than 1 on size
        scored(5, 0.99, 0, state=TrialState.PRUNED),  # no values: never on the front
    ]
    front = pareto_front(trials, DIRECTIONS)
    # Best accuracy first, then along the trade-off.
    assert [t.number for t in front] == [1, 0, 3]
    assert front[0] == ParetoPoint(1, (0.95, 5000.0), {"x": 1.0})


def test_equal_trials_are_all_on_the_front_in_number_order() -> None:
    front = pareto_front([scored(3, 0.9, 10), scored(1, 0.9, 10)], DIRECTIONS)
    assert [t.number for t in front] == [1, 3]


def test_spread_keeps_both_ends_and_is_evenly_spaced() -> None:
    front = tuple(ParetoPoint(i, (1.0 - i / 100, float(i))) for i in range(25))
    picked = spread(front, 10)
    assert len(picked) == 10
    assert picked[0].number == 0 and picked[-1].number == 24
    assert [t.number for t in picked] == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24]
    assert spread(front, 10) == picked  # the same ones every time
    assert spread(front[:4], 10) == front[:4]


def test_front_document_names_each_value_by_its_metric() -> None:
    spec = spec_model(
        objective=None,
        objectives=[
            {"metric": "accuracy", "direction": "Maximize"},
            {"metric": "parameters", "direction": "Minimize"},
        ],
    )
    front = (ParetoPoint(4, (0.97, 9546.0), {"hidden_size": 64}), ParetoPoint(2, (0.9, 100.0)))
    document = front_document(front, spec.all_objectives, limit=1)
    assert document == {
        "objectives": [
            {"metric": "accuracy", "direction": "Maximize"},
            {"metric": "parameters", "direction": "Minimize"},
        ],
        "size": 2,
        "trials": [
            {
                "trial": 4,
                "values": {"accuracy": 0.97, "parameters": 9546.0},
                "params": {"hidden_size": 64},
            },
        ],
    }
