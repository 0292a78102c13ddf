"""A conditional space sampled by Optuna, and constraints in the study's outputs: inactive
parameters are absent from every trial; an infeasible trial is never the best nor on the
front."""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from kubetune_study.constraints import feasible, violated
from kubetune_study.pareto import pareto_front
from kubetune_study.progress import BudgetState, summarize
from kubetune_study.search import build_sampler, suggest_all
from tests.harness.studies import spec_model
from tests.unit.kubetune_api.test_spec_conditions import OPTIMIZERS


def test_tpe_groups_a_conditional_space_and_asks_only_active_parameters() -> None:
    spec = spec_model(
        searchSpace=copy.deepcopy(OPTIMIZERS),
        stages=None,
        budget={"maxTrials": 40},
        sampler={"seed": 3, "nStartupTrials": 8},
    )
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._group
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen: set[frozenset[str]] = set()
    for _ in range(30):
        trial = study.ask()
        params = suggest_all(trial, spec)
        # What the trial holds is what the conditions allow, nothing else.
        assert params == spec.active_params(params) == trial.params
        seen.add(frozenset(params))
        momentum = params.get("momentum", 0.0)
        study.tell(trial, float(params.get("optimizer") == "SGD") + momentum)
    # Both branches and the nested one were sampled: the space really is conditional.
    assert any("momentum" in keys for keys in seen)
    assert any("kind" in keys and "momentum" not in keys for keys in seen)
    assert any("kind" not in keys for keys in seen)
    assert any("width_3" in keys for keys in seen) and any("width_3" not in keys for keys in seen)


def _trial(number: int, values: list[float], constraints: dict[str, float]) -> Any:
    trial = create_trial(
        values=values,
        params={"x": float(number)},
        distributions={"x": FloatDistribution(0, 100)},
        system_attrs={f"constraints:{k}": v for k, v in constraints.items()},
        state=TrialState.COMPLETE,
    )
    trial.number = number
    return trial


def test_an_infeasible_trial_is_counted_but_never_the_best() -> None:
    trials = [
        _trial(0, [0.99], {"parameters": 5.0}),  # the best value, outside the bound
        _trial(1, [0.90], {"parameters": -10.0}),
        _trial(2, [0.80], {"parameters": 0.0}),  # on the bound: feasible
    ]
    assert [feasible(t) for t in trials] == [False, True, True]
    assert violated(trials[0]) == ["parameters"] and violated(trials[2]) == []
    progress = summarize(trials, BudgetState(max_trials=3), "Maximize")
    assert progress.best_trial == 1 and progress.best_value == 0.90
    assert progress.infeasible == 1 and progress.complete == 3
    assert progress.stages[0].best_trial == 1
    # Optuna's own best trial agrees.
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    assert study.best_trial.number == 1


def test_an_infeasible_trial_is_never_on_the_front() -> None:
    trials = [
        _trial(0, [0.99, 10.0], {"latency": 1.0}),  # would dominate everything
        _trial(1, [0.90, 20.0], {"latency": -1.0}),
        _trial(2, [0.80, 5.0], {}),
        _trial(3, [0.70, 30.0], {"latency": -2.0}),  # dominated
    ]
    front = pareto_front(trials, ("Maximize", "Minimize"))
    assert [p.number for p in front] == [1, 2]
    progress = summarize(trials, BudgetState(max_trials=4), ("Maximize", "Minimize"))
    assert [p.number for p in progress.pareto_front] == [1, 2]
    assert progress.infeasible == 1
