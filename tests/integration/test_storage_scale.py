"""What a trial costs the storage does not grow with the study (real PostgreSQL, real runner).

Counts, not timings: the SQL statements a runner sends and the rows it reads per trial, once
its cache holds the study, are the same for a study of 20 trials and for one of 220. Before the
runner read its progress incrementally and logged its own trial lines, every trial also ran
Optuna's best-trial query (an ORDER BY over all of the study's values).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution
from sqlalchemy import event

from kubetune_api.contract import STAGE_ATTR, TELEMETRY_ATTR, WORKER_ATTR
from kubetune_api.spec import HPOStudy
from kubetune_study.progress import BudgetState
from kubetune_study.storage import ensure_study, open_storage, write_budget
from tests.harness.studies import small_runner_study
from trial_runner.runner import run_runner

#: Trials each runner runs per measurement; the last two are compared (the first fills caches).
RUN = 3


class StatementLog:
    """The SQL statements the runner's own thread runs through SQLAlchemy, and the rows read.

    Optuna's heartbeat thread is left out: it writes by time (one heartbeat per interval), not
    by trial, and a trial on a busy machine may outlast an interval."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.rows = 0

    def __call__(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        text = re.sub(r"\s+", " ", statement)
        self.statements.append(text)
        if text.lstrip().upper().startswith("SELECT") and cursor.rowcount > 0:
            self.rows += cursor.rowcount

    @contextmanager
    def listening(self) -> Iterator[StatementLog]:
        event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", self)
        try:
            yield self
        finally:
            event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", self)


def _study() -> HPOStudy:
    return small_runner_study("scale", "trial_runner.tasks.digits:DigitsMLP", RUN)


def _add_finished(study: optuna.Study, count: int) -> None:
    """Finished trials as runners leave them (parameters, value, stage, runner, telemetry)."""
    start = len(study.get_trials(deepcopy=False))
    study.add_trials(
        optuna.trial.create_trial(
            params={"learning_rate": 0.01, "hidden_size": 16 + i % 16},
            distributions={
                "learning_rate": FloatDistribution(1e-3, 3e-2, log=True),
                "hidden_size": IntDistribution(16, 32),
            },
            value=0.5 + i * 1e-4,
            user_attrs={
                STAGE_ATTR: 0,
                WORKER_ATTR: f"filler:{i % 4}",
                TELEMETRY_ATTR: {"overhead_seconds": 0.01},
            },
        )
        for i in range(start, start + count)
    )


def _per_trial(doc: HPOStudy, url: str, study: optuna.Study) -> tuple[Counter[str], int]:
    """Statements (by kind) and rows of the runner's last trial, the study ``RUN`` bigger."""
    write_budget(study, BudgetState(max_trials=len(study.get_trials()) + RUN))
    log = StatementLog()
    marks: list[tuple[int, int]] = []
    with log.listening():
        summary = run_runner(
            doc,
            url,
            doc.name,
            install_signal_handlers=False,
            on_trial=lambda _t: marks.append((len(log.statements), log.rows)),
        )
    assert summary.trials_run == RUN
    (first, rows_first), (last, rows_last) = marks[-2], marks[-1]
    kinds = Counter(" ".join(s.split()[:4]) for s in log.statements[first:last])
    return kinds, rows_last - rows_first


def test_a_trial_costs_the_storage_the_same_in_a_small_and_a_large_study(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep for orphaned claims runs by time (once per half grace period): with a long
    # grace period it runs at the first claim only, not at a trial that happens to cross it.
    monkeypatch.setattr("trial_runner.runner.grace_period", lambda: 10**6)
    doc = _study()
    study = ensure_study(open_storage(postgres_url), doc.name, doc.spec)
    _add_finished(study, 20)
    small, small_rows = _per_trial(doc, postgres_url, study)
    _add_finished(study, 200)
    large, large_rows = _per_trial(doc, postgres_url, study)

    assert large == small, f"statements per trial changed: {small} -> {large}"
    assert large_rows == small_rows
    # Reads stay small: the trial's own rows and the few unfinished ones, not the study's.
    assert large_rows < 100


def test_a_trial_runs_no_query_over_all_of_the_study_s_values(postgres_url: str) -> None:
    doc = _study()
    study = ensure_study(open_storage(postgres_url), doc.name, doc.spec)
    _add_finished(study, 20)
    write_budget(study, BudgetState(max_trials=len(study.get_trials()) + 2))
    log = StatementLog()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default, as in a runner pod
    with log.listening():
        run_runner(doc, postgres_url, doc.name, install_signal_handlers=False)
    best_queries = [s for s in log.statements if re.search(r"ORDER BY .*trial_values\.value", s)]
    assert best_queries == []
