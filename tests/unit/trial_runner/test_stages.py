"""What a trial claimed in a stage samples from: the best parameters of the earlier stages."""

from __future__ import annotations

from typing import Any

from kubetune_api.spec import Objective
from kubetune_study.progress import Claim, StageSummary, StudyProgress
from trial_runner.stages import best_params_before


def test_later_stages_start_from_the_best_of_the_earlier_ones() -> None:
    def stage(index: int, value: float, params: dict[str, Any]) -> StageSummary:
        return StageSummary(index, 2, 2, 0, 0, value, params, index)

    stages = (stage(0, 0.9, {"lr": 1}), stage(1, 0.7, {"lr": 2}), stage(2, 0.1, {"lr": 3}))
    progress = StudyProgress(0, 0, 0, 0, 0, 6, None, None, None, 2, stages, "Running", None)
    maximize = Objective(metric="accuracy", direction="Maximize")
    minimize = Objective(metric="loss", direction="Minimize")
    assert best_params_before(progress, Claim("Run", stage=2), maximize) == {"lr": 1}
    assert best_params_before(progress, Claim("Run", stage=2), minimize) == {"lr": 2}
    assert best_params_before(progress, Claim("Run", stage=0), maximize) is None


def test_with_several_objectives_a_tie_on_the_first_goes_to_the_better_second() -> None:
    def stage(index: int, values: tuple[float, float], params: dict[str, Any]) -> StageSummary:
        return StageSummary(index, 2, 2, 0, 0, values[0], params, index, best_values=values)

    current = stage(2, (0.99, 1.0), {"lr": 3})  # the claimed stage's own best is not looked at
    stages = (stage(0, (0.9, 900.0), {"lr": 1}), stage(1, (0.9, 300.0), {"lr": 2}), current)
    progress = StudyProgress(0, 0, 0, 0, 0, 6, None, None, None, 2, stages, "Running", None)
    objectives = [
        Objective(metric="accuracy", direction="Maximize"),
        Objective(metric="parameters", direction="Minimize"),
    ]
    assert best_params_before(progress, Claim("Run", stage=2), objectives) == {"lr": 2}
    # The first objective decides before the second is looked at.
    better_first = (stage(0, (0.95, 5000.0), {"lr": 1}), stages[1], current)
    progress = StudyProgress(0, 0, 0, 0, 0, 6, None, None, None, 2, better_first, "Running", None)
    assert best_params_before(progress, Claim("Run", stage=2), objectives) == {"lr": 1}
