"""The claim lock: "check the budget, then create a trial", one runner of a study at a time.

Without it, two runners that both see 49 of 50 trials claimed would both start one. Two
backends behind :class:`ClaimLock`, chosen by :func:`claim_lock` from the storage URL:

* :class:`AdvisoryClaimLock` (PostgreSQL): a session advisory lock keyed by the study name, on
  a connection of its own, re-opened with backoff for up to ``patience`` seconds when the
  storage is unreachable. PostgreSQL releases a session's advisory locks when the session
  ends, so a broken connection loses the lock: :meth:`ClaimLock.held` says whether it is
  still held.
* :class:`FileClaimLock` (journal and SQLite files): ``flock`` on a file beside the storage.

``release`` is idempotent, so the runner can release as soon as its trial exists and again
in a ``finally``; ``acquire`` of a held lock does nothing. Whatever changes what the budget
counts in two writes (a preempted trial failed, then its retry queued) happens under the lock
too, through :meth:`ClaimLock.holding`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from kubetune_study.outage import backoff_delays, first_line
from kubetune_study.storage._settings import PG_CONNECT_ARGS
from kubetune_study.storage._url import (
    StorageError,
    is_postgres,
    journal_path,
    libpq_url,
    redact,
)

__all__ = ["AdvisoryClaimLock", "ClaimLock", "FileClaimLock", "claim_lock"]


class ClaimLock(Protocol):
    """Serialises "check the budget, then create a trial" across every runner of a study."""

    def acquire(self) -> None:
        """Take the lock (waiting for it); nothing when already held."""

    def held(self) -> bool:
        """Whether the lock is still held (a broken PostgreSQL connection released it)."""

    def release(self) -> None:
        """Give the lock up; nothing when not held."""

    def close(self) -> None:
        """Release, and close what the lock keeps open."""

    def holding(self) -> contextlib.AbstractContextManager[None]:
        """The lock held for a block: taken and released around it, unless already held (then
        the caller keeps it)."""

    def __enter__(self) -> ClaimLock: ...

    def __exit__(self, *_: object) -> None: ...


def claim_lock(url: str, study_name: str, *, patience: float = 0.0) -> ClaimLock:
    """The claim lock of study ``study_name`` in the storage at ``url``.

    ``patience``: seconds a PostgreSQL lock waits out an unreachable storage.
    """
    if is_postgres(url):
        return AdvisoryClaimLock(url, study_name, patience=patience)
    if url.startswith("journal:"):
        return FileClaimLock(journal_path(url).with_suffix(".claims.lock"))
    if url.startswith("sqlite:///"):
        return FileClaimLock(Path(url[len("sqlite:///") :] + ".claims.lock"))
    raise StorageError(f"no claim lock for storage {redact(url)!r}")


class _HeldOnce(ABC):
    """What both backends share: ``acquire`` and ``release`` only act on a change."""

    _held = False

    @abstractmethod
    def _take(self) -> None: ...

    @abstractmethod
    def _give_up(self) -> None: ...

    def acquire(self) -> None:
        if self._held:
            return
        self._take()
        self._held = True

    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._give_up()

    def close(self) -> None:
        self.release()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        if self.held():
            yield
            return
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> ClaimLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class FileClaimLock(_HeldOnce):
    """``flock`` on the file ``path`` (created, with its folder, when first taken)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: IO[str] | None = None

    def _take(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self._path, "a+")  # noqa: SIM115 - held across calls
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def _give_up(self) -> None:
        assert self._handle is not None
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


class AdvisoryClaimLock(_HeldOnce):
    """A PostgreSQL session advisory lock keyed by the study name, on its own connection."""

    def __init__(self, url: str, study_name: str, *, patience: float = 0.0) -> None:
        self._url = url
        self._patience = patience
        self._key = int.from_bytes(
            hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True
        )
        self._conn: Any = None

    def _take(self) -> None:
        import psycopg2

        delays = backoff_delays(self._patience)
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg2.connect(libpq_url(self._url), **PG_CONNECT_ARGS)
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_lock(%s)", (self._key,))
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                self._drop_connection()
                pause = next(delays, None)
                if pause is None:
                    raise StorageError(
                        f"cannot take the claim lock on {redact(self._url)}: {first_line(error)}"
                    ) from None
                time.sleep(pause)

    def held(self) -> bool:
        if not self._held:
            return False
        import psycopg2

        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self._held = False
            self._drop_connection()
            return False
        return True

    def _give_up(self) -> None:
        import psycopg2

        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self._drop_connection()  # the session ended, and its lock with it

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()
        self._drop_connection()
