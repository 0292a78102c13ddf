"""Warm-start points on PostgreSQL: evaluated exactly once, with two preparers racing, two
runner processes, and a restart that raises the budget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from kubetune_api.contract import ORIGIN_ATTR
from kubetune_api.spec import StudySpec, load_study
from kubetune_study.storage import ensure_study, open_storage
from kubetune_study.warmstart import WarmStartReport, apply_warm_start
from tests.harness.runners import kubetune, start_runner
from tests.harness.studies import digits_study
from tests.integration.test_shared_study import finish

POINTS = [
    {"learning_rate": "3e-3", "batch_size": 32, "hidden_size": 24},
    {"learning_rate": "1e-2", "batch_size": 64, "hidden_size": 48},
    {"learning_rate": "2e-2", "batch_size": 32},  # the sampler chooses hidden_size
]


def point(values: dict[str, Any]) -> dict[str, Any]:
    return {"params": [{"name": k, "value": v} for k, v in values.items()]}


def prepare(url: str, name: str, spec: StudySpec) -> WarmStartReport | None:
    """What ``kubetune run`` and the operator do before runners claim: create, warm-start."""
    study = ensure_study(open_storage(url, heartbeat=False), name, spec)
    return apply_warm_start(study, spec, url, None)


def evaluations_of(trials: list[Any], values: dict[str, Any]) -> list[int]:
    """Finished trials whose parameters include the point's values."""
    expected = {k: float(v) if isinstance(v, str) else v for k, v in values.items()}
    return [
        t.number
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and all(t.params.get(k) == v for k, v in expected.items())
    ]


def test_points_are_evaluated_exactly_once_with_two_runners_and_across_a_restart(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    doc = digits_study(
        "warm", budget={"maxTrials": 5}, warmStart={"points": [point(p) for p in POINTS]}
    )
    path = write_study(doc)
    spec = load_study(path).spec

    # Two preparers at once (an operator pass and a `kubetune run`, say): one queues.
    reports: list[WarmStartReport | None] = []
    threads = [
        threading.Thread(target=lambda: reports.append(prepare(postgres_url, "warm", spec)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(reports) == 2 and reports[0] == reports[1]
    assert reports[0] is not None and reports[0].points_queued == 3

    logs = [tmp_path / f"runner-{i}.log" for i in range(2)]
    finish([start_runner(path, postgres_url, "warm", log) for log in logs], logs)
    study = ensure_study(open_storage(postgres_url), "warm", spec)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    for values in POINTS:
        assert len(evaluations_of(trials, values)) == 1, (values, [t.params for t in trials])
    # The points ran first: they were queued before any runner claimed.
    assert sorted(t.user_attrs.get(ORIGIN_ATTR) or "" for t in trials)[2:] == [
        "point 0",
        "point 1",
        "point 2",
    ]

    # A restart with a larger budget: `kubetune run` prepares the study again and its two
    # runners take the new trials; the points are not queued again.
    logs = tmp_path / "logs"
    run = kubetune(
        "run",
        str(path),
        "--storage",
        postgres_url,
        "--workers",
        "2",
        "--trials",
        "7",
        "--log-dir",
        str(logs),
        "--no-progress",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warm start: 3 of 3 point(s) queued" in run.stdout  # the record, not a new queue
    trials = study.get_trials()
    assert len(trials) == 7 and all(t.state == TrialState.COMPLETE for t in trials)
    for values in POINTS:
        assert len(evaluations_of(trials, values)) == 1, values
    assert sum(ORIGIN_ATTR in t.user_attrs for t in trials) == 3
