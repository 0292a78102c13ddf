"""Hung trials end: a trial past ``budget.trialTimeout``, or in which no step finishes within
``budget.stallTimeout``, ends Failed with the reason, and the study goes on with exactly its
budget.

The task (:mod:`tests.integration.hang_tasks`) blocks forever in a training step
(``threading.Event().wait()``), which nothing can interrupt: the runner process fails the trial
from its watchdog thread and is replaced (by ``kubetune run``'s supervisor, by a runner pod's
supervisor, or, alone, by itself). The Auto stall limit's floor and the grace period are cut
to seconds (``KUBETUNE_STALL_FLOOR``, ``KUBETUNE_TRIAL_LIMIT_GRACE``) so the tests take seconds;
bounds on how long a trial ran are generous (what is checked is that it ended, well within).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import FAILED_ATTR, PREEMPTED_ATTR, WORKER_ATTR
from kubetune_api.spec import load_study
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.helpers import REPO_ROOT
from tests.harness.runners import kubetune, runner_env
from tests.harness.studies import digits_study
from tests.integration.test_failing_trials import failed_in_a_row

HANGING = "tests.integration.hang_tasks:HangingMLP"
#: Limits of seconds.
LIMITS = {
    "KUBETUNE_STALL_FLOOR": "2",
    "KUBETUNE_TRIAL_LIMIT_GRACE": "1",
    # Heartbeats every second and stale after 4: a sweep would preempt a trial left running.
    "KUBETUNE_HEARTBEAT_INTERVAL": "1",
    "KUBETUNE_HEARTBEAT_GRACE_PERIOD": "4",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """:data:`LIMITS`, and a path with the repository's tests package alone for the runners to
    import the task from (the repository itself on the path would hide the standard library's
    ``operator`` behind kubetune's ``operator/``)."""
    path = tmp_path_factory.mktemp("tasks")
    (path / "tests").symlink_to(REPO_ROOT / "tests")
    return {**LIMITS, "PYTHONPATH": str(path)}


#: How long a trial past a one- or two-second limit may have run: its limit, the grace, a
#: replaced process's start and a busy machine, many times over.
ENDED_WITHIN = 60.0


def hanging_study(name: str, config: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A digits study whose task hangs or is slow as ``config`` says (see hang_tasks)."""
    return digits_study(
        name,
        task={"entrypoint": HANGING, "config": config},
        training={"epochs": 1},
        **spec,
    )


def seconds(trial: FrozenTrial) -> float:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def check_one_failed(trials: list[FrozenTrial], reason: str, max_trials: int) -> FrozenTrial:
    """Exactly the budget finished, one trial failed with ``reason``, none preempted, none
    retried or still running."""
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state, t.user_attrs.get(FAILED_ATTR)) for t in trials]
    assert failed[0].user_attrs.get(FAILED_ATTR) == reason, failed[0].user_attrs
    assert all(PREEMPTED_ATTR not in t.user_attrs for t in trials)
    assert all("failed_trial" not in t.system_attrs for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == max_trials and len(trials) == max_trials + 1
    assert seconds(failed[0]) < ENDED_WITHIN
    return failed[0]


def journal_trials(tmp_path: Path, name: str) -> list[FrozenTrial]:
    storage = open_storage(f"journal:{tmp_path}/.kubetune/studies.journal")
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_kubetune_run_fails_a_stalled_trial_and_replaces_its_process(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path], env: dict[str, str]
) -> None:
    config = {"markers": str(tmp_path), "picks": 1, "hang_at_step": 3}
    path = write_study(hanging_study("stalled", config, budget={"maxTrials": 4}))
    run = kubetune("run", str(path), "--workers", "2", "--no-progress", cwd=tmp_path, **env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "done (BudgetSpent)" in run.stdout
    assert "replaced: its trial was stuck past its limit" in run.stderr, run.stderr
    check_one_failed(journal_trials(tmp_path, "stalled"), "Stalled", 4)


def test_a_trial_past_its_time_limit_ends_at_its_next_step_in_the_same_process(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path], env: dict[str, str]
) -> None:
    """A slow trial that keeps making steps is ended at its next step; the process goes on."""
    config = {"markers": str(tmp_path), "picks": 1, "slow_seconds": 0.3}
    budget = {"maxTrials": 3, "trialTimeout": "4s", "stallTimeout": "1h"}
    path = write_study(hanging_study("too-long", config, budget=budget))
    run = kubetune("run", str(path), "--workers", "1", "--no-progress", cwd=tmp_path, **env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "replaced" not in run.stderr, run.stderr
    trials = journal_trials(tmp_path, "too-long")
    failed = check_one_failed(trials, "TrialTimeout", 3)
    assert 4 <= seconds(failed) < ENDED_WITHIN
    # One process ran them all: it was not replaced.
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 1


def test_a_study_whose_every_trial_hangs_is_stopped_by_the_failure_breaker(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path], env: dict[str, str]
) -> None:
    budget = {"maxTrials": 1000, "trialTimeout": "2s", "maxConsecutiveFailedTrials": 4}
    path = write_study(hanging_study("all-hang", {"hang_at_step": 1}, budget=budget))
    run = kubetune("run", str(path), "--workers", "1", "--no-progress", cwd=tmp_path, **env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "done (ConsecutiveFailures)" in run.stdout, run.stdout
    assert failed_in_a_row(run.stdout) == 4, run.stdout
    trials = journal_trials(tmp_path, "all-hang")
    assert len(trials) == 4
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs.get(FAILED_ATTR) == "TrialTimeout" for t in trials)
    assert all(seconds(t) < ENDED_WITHIN for t in trials)


def test_a_slow_trial_that_keeps_making_steps_is_not_stalled_under_auto(
    tmp_path: Path, write_study: Callable[[dict[str, Any]], Path], env: dict[str, str]
) -> None:
    """Every training step takes 2.5 s, longer than the Auto floor (2 s here): Auto follows
    the steps (10 times the slowest), so no trial stalls."""
    space = [
        {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"},
        {"name": "batch_size", "type": "Categorical", "choices": [512]},
    ]
    doc = hanging_study("slow", {"slow_seconds": 2.5}, budget={"maxTrials": 2}, searchSpace=space)
    run = kubetune("run", str(write_study(doc)), "--no-progress", cwd=tmp_path, **env)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = journal_trials(tmp_path, "slow")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [
        t.user_attrs.get(FAILED_ATTR) for t in trials
    ]


def start_pod_runner(
    study: Path, url: str, name: str, log: Path, env: dict[str, str], *args: str
) -> int:
    """What a runner pod runs (``kubetune runner``), to completion; its exit code."""
    with open(log, "ab") as handle:
        cmd = [sys.executable, "-m", "trial_runner.cli", "runner", "--study-name", name]
        return subprocess.run(
            [*cmd, *args, str(study)],
            stdout=handle,
            stderr=handle,
            env=runner_env(KUBETUNE_STORAGE_URL=url, **env),
            timeout=600,
        ).returncode


def test_a_lone_runner_on_postgresql_replaces_itself_in_place(
    postgres_url: str,
    write_study: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """A runner pod with one process: the process re-executes itself (same pid) and goes on."""
    config = {"markers": str(tmp_path), "picks": 1, "hang_at_step": 3}
    path = write_study(hanging_study("lone", config, budget={"maxTrials": 3}))
    study = ensure_study(open_storage(postgres_url), "lone", load_study(path).spec)
    log = tmp_path / "runner.log"
    assert start_pod_runner(path, postgres_url, "lone", log, env) == 0, log.read_text()[-4000:]
    said = log.read_text()
    assert "replacing this runner process" in said and "Traceback" not in said, said[-4000:]
    assert said.count("data loaded in") == 2, said[-4000:]
    trials = study.get_trials()
    check_one_failed(trials, "Stalled", 3)
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 1  # the same process, in place


def test_a_runner_pod_s_processes_on_postgresql_replace_the_one_that_hung(
    postgres_url: str,
    write_study: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    config = {"markers": str(tmp_path), "picks": 1, "hang_at_step": 1}
    budget = {"maxTrials": 4, "trialTimeout": "3s"}
    path = write_study(hanging_study("pod", config, budget=budget))
    study = ensure_study(open_storage(postgres_url), "pod", load_study(path).spec)
    log = tmp_path / "pod.log"
    code = start_pod_runner(path, postgres_url, "pod", log, env, "--processes", "2")
    assert code == 0, log.read_text()[-4000:]
    assert "replaced: its trial was stuck past its limit" in log.read_text()
    check_one_failed(study.get_trials(), "TrialTimeout", 4)
