"""The failure breaker: a study whose every trial fails stops, with the reason, everywhere.

The task is the built-in digits MLP given an activation it does not know, so every trial
fails in ``build_model`` (a real task failing for a real reason, after its data loaded once).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS, load_study
from kubetune_study.storage import ensure_study, open_storage, read_progress
from tests.harness.runners import kubetune, start_runner
from tests.harness.studies import digits_study

BREAKER = "reaching budget.maxConsecutiveFailedTrials"
#: The breaker's run, plus at most the trial the other runner had in flight.
IN_A_ROW = range(DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS, DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS + 2)


def failed_in_a_row(said: str) -> int:
    """The run of failures a message reports (0: it reports none)."""
    found = re.search(r"study failed: the last (\d+) trials failed in a row", said)
    return int(found[1]) if found else 0


def always_failing(name: str, **spec: Any) -> dict[str, Any]:
    """A study without maxFailedTrials whose every trial raises (KeyError: 'swish')."""
    failing: dict[str, Any] = {
        "searchSpace": [
            {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"},
            {"name": "activation", "type": "Categorical", "choices": ["swish"]},
        ],
        "budget": {"maxTrials": 1000},
    }
    return digits_study(name, **{**failing, **spec})


def test_kubetune_run_stops_a_study_whose_trials_all_fail(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path]
) -> None:
    path = write_study(always_failing("broken"))
    started = time.monotonic()
    run = kubetune("run", str(path), "--workers", "2", "--no-progress", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert time.monotonic() - started < 300
    assert "done (ConsecutiveFailures)" in run.stdout
    assert failed_in_a_row(run.stdout) in IN_A_ROW, run.stdout
    assert BREAKER in run.stdout and "Traceback" not in run.stderr
    storage = open_storage(f"journal:{tmp_path}/.kubetune/studies.journal")
    study = optuna.load_study(study_name="broken", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.FAIL for t in trials)
    assert len(trials) in IN_A_ROW
    # Running it again does not start more trials: the study stays failed.
    again = kubetune("run", str(path), "--no-progress", cwd=tmp_path)
    assert again.returncode == 1 and len(study.get_trials(deepcopy=False)) == len(trials)


def test_runners_sharing_a_study_stop_and_say_why(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    path = write_study(always_failing("broken-shared"))
    spec = load_study(path).spec
    study = ensure_study(open_storage(postgres_url), "broken-shared", spec)
    logs = [tmp_path / f"runner-{i}.log" for i in range(2)]
    procs = [start_runner(path, postgres_url, "broken-shared", log) for log in logs]
    for proc, log in zip(procs, logs, strict=True):
        # A runner's job is done when the study is: it exits 0 and its log says why.
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        said = re.search(
            r"the study failed: the last (\d+) trials failed in a row", log.read_text()
        )
        # Each runner counts the run when it stops: with the other's last trial, or before it.
        assert said and int(said[1]) in (10, 11), log.read_text()[-3000:]
    progress = read_progress(study, spec)
    assert progress.outcome == "ConsecutiveFailures" and progress.done
    assert progress.failure is not None and BREAKER in progress.failure
    assert progress.failed in IN_A_ROW


def test_a_configured_run_of_failures_stops_sooner(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path]
) -> None:
    doc = always_failing("brittle", budget={"maxTrials": 1000, "maxConsecutiveFailedTrials": 2})
    run = kubetune("run", str(write_study(doc)), "--no-progress", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert failed_in_a_row(run.stdout) == 2, run.stdout
