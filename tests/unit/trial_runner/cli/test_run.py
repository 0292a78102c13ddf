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
        ({"parallelism": 2, "trialsPerDevice": 3}, 6),
        # Auto needs a device's memory to decide; on this machine it is one per runner.
        ({"parallelism": 2, "trialsPerDevice": "Auto"}, 2),
    ],
)
def test_workers_default_to_the_runner_processes_the_spec_asks_for(
    resources: dict[str, object], workers: int
) -> None:
    assert default_workers(spec_model(resources=resources)) == workers
