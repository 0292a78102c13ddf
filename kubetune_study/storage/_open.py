"""Opening an Optuna storage for a URL: the journal file, or an RDB storage that waits out
outages and sends heartbeats."""

from __future__ import annotations

import time
from typing import Any

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileOpenLock

from kubetune_study.outage import PatientRDBStorage, backoff_delays, first_line, is_connection_error
from kubetune_study.preemption import ResumingRetry
from kubetune_study.storage._journal import SyncedJournal
from kubetune_study.storage._settings import PG_CONNECT_ARGS, grace_period, heartbeat_interval
from kubetune_study.storage._url import (
    StorageError,
    is_postgres,
    journal_path,
    redact,
    sqlalchemy_url,
)

__all__ = ["open_storage"]


def open_storage(url: str, *, heartbeat: bool = True, patience: float = 0.0) -> BaseStorage:
    """An Optuna storage for ``url`` (see :mod:`kubetune_study.storage` for accepted forms).

    Args:
        url: The storage URL.
        heartbeat: Send heartbeats of running trials and preempt those whose heartbeats stop.
        patience: Seconds an RDB storage waits for an unreachable database, when opening and
            on every call after (:mod:`kubetune_study.outage`): runners wait
            :func:`~kubetune_study.storage.storage_patience`; 0 (commands a person runs, the
            operator) gives up at once.
    """
    if url.startswith("journal:"):
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = SyncedJournal(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    if is_postgres(url) or url.startswith("sqlite:"):
        return _open_rdb(url, heartbeat=heartbeat, patience=patience)
    raise StorageError(
        f"unsupported storage URL {redact(url)!r}: use postgresql://…, journal:PATH or sqlite:///PATH"
    )


def _open_rdb(url: str, *, heartbeat: bool, patience: float) -> BaseStorage:
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": heartbeat_interval(),
            "grace_period": grace_period(),
            "heartbeat_stale_trial_callback": ResumingRetry(),
        }
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["connect_args"] = PG_CONNECT_ARGS
    delays = backoff_delays(patience)
    # Processes that create the schema at once race (a duplicate key in PostgreSQL's
    # catalog): the loser tries again, and finds the tables.
    races = iter((1.0, 2.0, 3.0, 4.0))
    while True:
        try:
            return PatientRDBStorage(
                sqlalchemy_url(url), patience=patience, engine_kwargs=engine_kwargs, **kwargs
            )
        except Exception as exc:  # sqlalchemy raises many kinds; report them uniformly
            if is_connection_error(exc):
                pause = next(delays, None)
            else:
                pause = next(races, None) if _lost_schema_race(exc) else None
            if pause is None:
                raise StorageError(
                    redact(f"cannot open storage {url}: {first_line(exc)}")
                ) from None
            time.sleep(pause)


def _lost_schema_race(error: BaseException) -> bool:
    """Whether creating Optuna's tables failed because another process created them first."""
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError)
