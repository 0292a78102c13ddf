"""``kubetune run``'s default number of runner processes (pure)."""

from __future__ import annotations

import pytest

from tests.harness.studies import spec_model
from trial_runner.cli._run import default_workers


@pytest.mark.parametrize(
    ("resources", "workers"),
    [
        ({}, 1),
        ({"parallelism": 3}, 3),
        # trialsPerDevice lays the trials out on a cluster; it does not add to them.
        ({"parallelism": 2, "trialsPerDevice": 3}, 2),
        ({"parallelism": 2, "trialsPerDevice": "Auto"}, 2),
    ],
)
def test_workers_default_to_the_trials_the_spec_runs_at_once(
    resources: dict[str, object], workers: int
) -> None:
    assert default_workers(spec_model(resources=resources)) == workers
