"""Preempted trials on a journal storage (no server): marked, failed, re-queued with their
finished folds, counted apart; trials no runner will ever finish are released."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kubetune_api.contract import (
    FOLDS_ATTR,
    PREEMPTED_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WORKER_ATTR,
)
from kubetune_study.preemption import MAX_RETRY, preempt, release_stale_trials, retried_from
from kubetune_study.progress import BudgetState, summarize
from kubetune_study.storage import ClaimLock, claim_lock, open_storage, requeue_trials_of_worker


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=open_storage(_url(tmp_path)))


def _url(tmp_path: Path) -> str:
    return f"journal:{tmp_path}/s.journal"


def _lock(tmp_path: Path) -> ClaimLock:
    return claim_lock(_url(tmp_path), "study")


def test_a_preempted_trial_is_marked_failed_and_its_retry_carries_its_folds(
    tmp_path: Path,
) -> None:
    study, lock = _study(tmp_path), _lock(tmp_path)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    folds = [{"fold": 0, "score": 0.9, "metrics": {}, "epochs": 2, "stop": "Completed",
              "reports": [[0, 0.9]]}]  # fmt: skip
    for key, value in {STAGE_ATTR: 1, WORKER_ATTR: "host:1", FOLDS_ATTR: folds}.items():
        running.set_user_attr(key, value)
    running.set_user_attr(TELEMETRY_ATTR, {"from": "the preempted run"})

    assert preempt(study, running._trial_id, "HeartbeatLost", lock)
    assert not preempt(study, running._trial_id, "HeartbeatLost", lock)  # someone got there first
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[PREEMPTED_ATTR] == "HeartbeatLost"
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert retried_from(retry) == failed.number
    # The retry carries what the trial is (its stage, its finished folds), not what its
    # preempted run was (the mark, the runner, telemetry).
    assert retry.user_attrs == {STAGE_ATTR: 1, FOLDS_ATTR: folds}
    progress = summarize(study.get_trials(), BudgetState(max_trials=2), "Minimize")
    assert (progress.preempted, progress.failed, progress.waiting) == (1, 0, 1)


def test_a_trial_is_queued_again_at_most_max_retry_times(tmp_path: Path) -> None:
    study, lock = _study(tmp_path), _lock(tmp_path)
    first = study.ask()
    first.suggest_float("x", 0, 1)
    preempt(study, first._trial_id, "Terminated", lock)
    for _ in range(MAX_RETRY):
        retry = study.ask()  # runs the queued retry
        assert retry.params == first.params
        preempt(study, retry._trial_id, "Terminated", lock)
    trials = study.get_trials()
    assert len(trials) == MAX_RETRY + 1, "no retry after the last preemption"
    progress = summarize(trials, BudgetState(max_trials=5), "Minimize")
    assert (progress.preempted, progress.failed, progress.active) == (MAX_RETRY + 1, 0, 0)


def test_a_dead_local_runner_s_trials_are_preempted(tmp_path: Path) -> None:
    study = _study(tmp_path)
    dead, alive = study.ask(), study.ask()
    dead.set_user_attr(WORKER_ATTR, "host:1")
    alive.set_user_attr(WORKER_ATTR, "host:2")
    assert requeue_trials_of_worker(study, "host:1", _lock(tmp_path)) == [dead.number]
    trials = study.get_trials()
    assert trials[dead.number].user_attrs[PREEMPTED_ATTR] == "RunnerExited"
    assert trials[alive.number].state == TrialState.RUNNING


def test_a_claim_that_broke_off_before_its_runner_named_itself_is_released(tmp_path: Path) -> None:
    study = _study(tmp_path)
    orphan = study.ask()  # created, then the claim failed: no runner, no heartbeat
    orphan.suggest_float("x", 0, 1)
    named = study.ask()
    named.set_user_attr(WORKER_ATTR, "host:1")
    # Not before the grace period: the claim may still be under way.
    assert release_stale_trials(study, 3600, _lock(tmp_path)) == []
    assert release_stale_trials(study, 0, _lock(tmp_path)) == [orphan.number]
    trials = study.get_trials()
    assert trials[orphan.number].user_attrs[PREEMPTED_ATTR] == "ClaimInterrupted"
    assert trials[named.number].state == TrialState.RUNNING  # its runner looks after it
    assert [t.state for t in trials[2:]] == [TrialState.WAITING]


def test_a_trial_is_failed_and_queued_again_under_the_claim_lock(tmp_path: Path) -> None:
    """Failing a preempted trial and queuing its retry are two writes. The budget counts the
    trial before and its retry after, neither in between: a runner that counted in between
    would start one trial past the budget. Runners count under the claim lock, so both writes
    wait for it."""
    study = _study(tmp_path)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    claiming = _lock(tmp_path)
    claiming.acquire()  # a runner counting the budget
    preempted: list[bool] = []
    thread = threading.Thread(
        target=lambda: preempted.append(
            preempt(study, running._trial_id, "RunnerExited", _lock(tmp_path))
        )
    )
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "the trial was failed while a runner held the claim lock"
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    claiming.release()
    thread.join(30)
    assert preempted == [True]
    progress = summarize(study.get_trials(), BudgetState(max_trials=1), "Minimize")
    assert (progress.preempted, progress.waiting, progress.running) == (1, 1, 0)
