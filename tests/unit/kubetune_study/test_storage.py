"""Storage URLs, the claim lock, the live budget and re-queueing, on local files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from kubetune_api.contract import (
    BUDGET_ATTR,
    HEARTBEAT_GRACE_PERIOD_ENV,
    HEARTBEAT_INTERVAL_ENV,
    STARTED_ATTR,
    STORAGE_PATIENCE_ENV,
    WORKER_ATTR,
)
from kubetune_api.spec import DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS, SpecError
from kubetune_study.progress import BudgetState
from kubetune_study.storage import (
    AdvisoryClaimLock,
    FileClaimLock,
    StorageError,
    budget_from_spec,
    claim_lock,
    ensure_study,
    grace_period,
    heartbeat_interval,
    open_storage,
    read_budget,
    read_progress,
    redact,
    requeue_trials_of_worker,
    storage_patience,
    write_budget,
)
from kubetune_study.storage._study import REPORT_EVERY_ATTR
from tests.harness.studies import spec_model


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://kt:s3cret@db:5432/hpo") == "postgresql://kt:***@db:5432/hpo"
    assert redact("postgresql+psycopg2://kt:s3cret@db/hpo") == "postgresql+psycopg2://kt:***@db/hpo"
    assert redact("journal:.kubetune/studies.journal") == "journal:.kubetune/studies.journal"
    assert redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # URLs nothing can parse still hold a password: a slash short, a colon short.
        ("postgresql:/kt:s3cret@db/hpo", "postgresql:/kt:***@db/hpo"),
        ("postgresql//kt:s3cret@db/hpo", "postgresql//kt:***@db/hpo"),
        # Unencoded '@' and '/' in the password: hidden whole.
        ("postgresql://kt:s3@c/ret@db/hpo", "postgresql://kt:***@db/hpo"),
        # In a message, every URL, up to the space or quote after it.
        (
            "unsupported storage URL 'pg:/a:s3cret@h/d'; cannot open postgresql://b:s3cret@h: x",
            "unsupported storage URL 'pg:/a:***@h/d'; cannot open postgresql://b:***@h: x",
        ),
        ("at 10:30 on host db", "at 10:30 on host db"),
    ],
)
def test_redact_hides_a_password_in_any_url_or_message(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_a_storage_that_cannot_be_opened_says_so_without_the_password() -> None:
    with pytest.raises(StorageError) as info:
        open_storage("postgresql:/kt:s3cret@127.0.0.1:1/hpo")
    assert "s3cret" not in str(info.value) and "kt:***@" in str(info.value)


def test_storage_url_forms(tmp_path: Path) -> None:
    journal = open_storage(f"journal:{tmp_path}/deep/dir/studies.journal")
    assert isinstance(journal, JournalStorage)
    assert (tmp_path / "deep" / "dir").is_dir()  # made for the journal
    assert isinstance(open_storage(f"journal://{tmp_path}/other.journal"), JournalStorage)
    sqlite = open_storage(f"sqlite:///{tmp_path}/studies.db", heartbeat=False)
    assert isinstance(sqlite, RDBStorage)
    with pytest.raises(StorageError, match="unsupported storage URL") as info:
        open_storage("mysql://kt:s3cret@db/hpo")
    assert "s3cret" not in str(info.value)


def test_claim_lock_excludes_other_holders_and_releases_idempotently(tmp_path: Path) -> None:
    url = f"journal:{tmp_path}/studies.journal"
    lock_file = tmp_path / "studies.claims.lock"

    def free() -> bool:
        with open(lock_file, "a+") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    lock = claim_lock(url, "study")
    with lock:
        assert not free()
        lock.acquire()  # already held: no deadlock
    assert free()
    lock.release()  # releasing twice is fine (the runner does it in a finally)
    with pytest.raises(StorageError, match="no claim lock"):
        claim_lock("mysql://db/hpo", "study")


def test_claim_lock_backend_follows_the_url(tmp_path: Path) -> None:
    # Choosing the backend connects to nothing: the advisory lock connects when taken.
    assert isinstance(claim_lock("postgresql://kt:pw@127.0.0.1:1/hpo", "s"), AdvisoryClaimLock)
    assert isinstance(claim_lock("postgres://kt:pw@127.0.0.1:1/hpo", "s"), AdvisoryClaimLock)
    assert isinstance(claim_lock(f"journal:{tmp_path}/s.journal", "s"), FileClaimLock)
    sqlite = claim_lock(f"sqlite:///{tmp_path}/s.db", "s")
    assert isinstance(sqlite, FileClaimLock)
    with sqlite:
        assert sqlite.held()
    assert not sqlite.held()
    assert (tmp_path / "s.db.claims.lock").exists()


def test_timings_are_read_from_the_environment_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (HEARTBEAT_INTERVAL_ENV, HEARTBEAT_GRACE_PERIOD_ENV, STORAGE_PATIENCE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert (heartbeat_interval(), grace_period(), storage_patience()) == (10, 30, 300.0)
    monkeypatch.setenv(HEARTBEAT_INTERVAL_ENV, "2")
    assert (heartbeat_interval(), grace_period()) == (2, 6)
    monkeypatch.setenv(HEARTBEAT_GRACE_PERIOD_ENV, "7")
    monkeypatch.setenv(STORAGE_PATIENCE_ENV, "1.5")
    assert (grace_period(), storage_patience()) == (7, 1.5)


def test_budget_round_trips_through_the_study(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path}/s.journal"))
    assert read_budget(study) is None
    budget = BudgetState(
        max_trials=7, max_failed_trials=2, timeout_seconds=90.0, stage_trials=(3, None)
    )
    write_budget(study, budget)
    assert read_budget(study) == budget
    assert study.user_attrs[BUDGET_ATTR]["stageTrials"] == [3, None]
    breaker = BudgetState(max_trials=7, max_consecutive_failed_trials=4)
    write_budget(study, breaker)
    assert read_budget(study) == breaker


def test_a_budget_stored_before_the_failure_breaker_gets_its_default(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path}/s.journal"))
    study.set_user_attr(BUDGET_ATTR, {"maxTrials": 7, "maxFailedTrials": None})
    stored = read_budget(study)
    assert stored is not None
    assert stored.max_consecutive_failed_trials == DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS
    spec = spec_model(budget={"maxTrials": 7, "maxConsecutiveFailedTrials": 3})
    assert budget_from_spec(spec).max_consecutive_failed_trials == 3


def test_ensure_study_stores_the_spec_budget_and_refuses_another_direction(tmp_path: Path) -> None:
    storage = open_storage(f"journal:{tmp_path}/s.journal")
    spec = spec_model()
    study = ensure_study(storage, "digits", spec)
    assert read_budget(study) == budget_from_spec(spec)
    assert budget_from_spec(spec).timeout_seconds == 5400  # "1h30m", parsed once by the spec
    assert STARTED_ATTR in study.user_attrs
    assert study.metric_names == ["accuracy"]  # named for optuna-dashboard and the report
    edited = spec_model(budget={"maxTrials": 20})
    assert read_progress(ensure_study(storage, "digits", edited), edited).max_trials == 20
    with pytest.raises(SpecError, match="direction"):
        ensure_study(
            storage, "digits", spec_model(objective={"metric": "loss", "direction": "Minimize"})
        )


def test_a_study_keeps_the_cadence_it_started_with(tmp_path: Path) -> None:
    storage = open_storage(f"journal:{tmp_path}/s.journal")
    few_folds = {"folds": 3, "epochs": 4}
    auto = spec_model(pruner={"type": "Hyperband"}, training=few_folds)
    new = ensure_study(storage, "new", auto)
    assert new.user_attrs[REPORT_EVERY_ATTR] == "Epoch"
    new.tell(new.ask(), 0.5)
    assert ensure_study(storage, "new", auto).user_attrs[REPORT_EVERY_ATTR] == "Epoch"
    # A study an older kubetune started (no cadence recorded, its default was Fold): Auto
    # would report per epoch now, so it is refused until the spec says which cadence.
    old = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    old.set_user_attr(STARTED_ATTR, "2026-01-01T00:00:00+00:00")
    old.tell(old.ask(), 0.5)
    with pytest.raises(SpecError) as refused:
        ensure_study(storage, "old", auto)
    assert refused.value.errors[0].path == "spec.training.reportEvery"
    assert "set reportEvery: Fold to resume it as it ran" in str(refused.value.errors[0])
    fold = spec_model(pruner={"type": "Hyperband"}, training={**few_folds, "reportEvery": "Fold"})
    assert ensure_study(storage, "old", fold).user_attrs[REPORT_EVERY_ATTR] == "Fold"
    with pytest.raises(SpecError, match="reported per Fold"):
        ensure_study(storage, "old", auto)  # recorded now, refused the same way
    # A cadence the spec gives is taken as asked, and recorded.
    epoch = spec_model(pruner={"type": "Hyperband"}, training={**few_folds, "reportEvery": "Epoch"})
    assert ensure_study(storage, "old", epoch).user_attrs[REPORT_EVERY_ATTR] == "Epoch"
    assert ensure_study(storage, "old", auto).user_attrs[REPORT_EVERY_ATTR] == "Epoch"
    # Where Auto resolves to Fold, as the old default did, an older study resumes unasked.
    nop = optuna.create_study(storage=storage, study_name="nop", direction="maximize")
    nop.set_user_attr(STARTED_ATTR, "2026-01-01T00:00:00+00:00")
    nop.tell(nop.ask(), 0.5)
    resumed = ensure_study(storage, "nop", spec_model(training=few_folds))
    assert resumed.user_attrs[REPORT_EVERY_ATTR] == "Fold"


def test_a_study_of_several_objectives_keeps_them(tmp_path: Path) -> None:
    storage = open_storage(f"journal:{tmp_path}/s.journal")
    two = [
        {"metric": "accuracy", "direction": "Maximize"},
        {"metric": "parameters", "direction": "Minimize"},
    ]
    spec = spec_model(objective=None, objectives=two)
    study = ensure_study(storage, "pareto", spec)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "parameters"]  # shown by optuna-dashboard
    assert ensure_study(storage, "pareto", spec).study_name == "pareto"  # loads it again
    with pytest.raises(SpecError) as single:
        ensure_study(storage, "pareto", spec_model())
    assert str(single.value.errors[0]) == (
        "spec.objective: study 'pareto' already exists in the storage with 2 objectives: "
        "accuracy (Maximize), parameters (Minimize); the objectives of a study cannot change "
        "(use a new metadata.name)"
    )
    renamed = spec_model(
        objective=None, objectives=[two[0], {"metric": "latency", "direction": "Minimize"}]
    )
    with pytest.raises(SpecError) as other:
        ensure_study(storage, "pareto", renamed)
    assert other.value.errors[0].path == "spec.objectives"
    with pytest.raises(SpecError) as several:
        ensure_study(storage, "digits", spec_model())
        ensure_study(storage, "digits", spec)
    assert "with one objective (Maximize)" in str(several.value.errors[0])


def test_requeue_fails_and_retries_only_the_dead_workers_trials(tmp_path: Path) -> None:
    url = f"journal:{tmp_path}/s.journal"
    study, lock = optuna.create_study(storage=open_storage(url)), claim_lock(url, "s")
    dead, alive = study.ask(), study.ask()
    dead.suggest_float("x", 0, 1)
    dead.set_user_attr(WORKER_ATTR, "host:1")
    alive.set_user_attr(WORKER_ATTR, "host:2")
    assert requeue_trials_of_worker(study, "host:1", lock) == [dead.number]
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].params == trials[dead.number].params
    assert requeue_trials_of_worker(study, "host:1", lock) == []  # nothing left running


def test_a_journal_trial_is_synced_to_disk_when_created_and_finished_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"journal:{tmp_path}/studies.journal"
    study = optuna.create_study(study_name="synced", storage=open_storage(url))
    syncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.suggest_int("n", 1, 4)
    trial.set_user_attr("stage", 0)
    trial.set_user_attr("worker", "host:1")
    trial.report(0.5, 0)
    study.tell(trial, 0.25)
    assert len(syncs) == 2  # created, finished (not once per parameter, attribute, value)
    # Everything is in the file: a fresh reader sees the whole trial.
    again = optuna.load_study(study_name="synced", storage=open_storage(url))
    (stored,) = again.get_trials()
    assert stored.value == 0.25 and set(stored.params) == {"x", "n"}
    assert stored.user_attrs == {"stage": 0, "worker": "host:1"}
    assert stored.intermediate_values == {0: 0.5}
