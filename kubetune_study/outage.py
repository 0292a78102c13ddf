"""Storage outages: what counts as one, and an RDB storage that waits them out.

A PostgreSQL restart, a failover or a dropped connection should cost a runner a pause, not its
trial. :class:`PatientRDBStorage` is Optuna's ``RDBStorage`` with three changes:

* **Calls wait.** A call that cannot reach the database is retried with backoff
  (:func:`backoff_delays`) for up to ``patience`` seconds, then raised. Only calls that are safe
  to repeat are retried: reads, and writes that set a value (an attribute, a parameter, an
  intermediate value, a trial's final state). Creating a study or a trial is not retried: it
  may have been committed before the connection broke. SQLAlchemy's ``pool_pre_ping`` replaces
  the broken connections.
* **Heartbeats survive.** Optuna's heartbeat thread ends at its first error, after which the
  trial looks dead to everyone. Here a heartbeat that fails is skipped; the next one is sent
  on time.
* **An outage is not a dead runner.** During an outage nobody's heartbeats arrive. So this
  process calls a running trial stale only once it has reached the storage without a break
  for a whole grace period (in which every live runner has sent a heartbeat again).

A ``patience`` of 0 (the operator) raises at once: its next pass asks again, and the study
says ``StorageUnavailable`` meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, TypeVar

import optuna
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

__all__ = ["PatientRDBStorage", "backoff_delays", "is_connection_error"]

log = logging.getLogger("kubetune.storage")

T = TypeVar("T")

#: First and longest pause between two attempts, in seconds.
FIRST_DELAY, LONGEST_DELAY = 0.5, 10.0


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says the database could not be
    reached or the connection broke (as opposed to a rejected statement)."""
    import psycopg2
    import sqlalchemy.exc

    kinds = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DisconnectionError,
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
    )
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def backoff_delays(patience: float) -> Iterator[float]:
    """The pauses between attempts: doubling from FIRST_DELAY up to LONGEST_DELAY, and adding up
    to ``patience`` seconds in all (none when ``patience`` is 0)."""
    left, delay = patience, FIRST_DELAY
    while left > 0:
        pause = min(delay, left)
        yield pause
        left -= pause
        delay = min(delay * 2, LONGEST_DELAY)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class PatientRDBStorage(RDBStorage):
    """``RDBStorage`` that waits out storage outages (see the module docstring).

    Thread safety: as ``RDBStorage``; the reachability record is written by whichever thread
    last talked to the database (a heartbeat thread and the training thread may both).
    """

    def __init__(self, url: str, *, patience: float, **kwargs: Any) -> None:
        self.patience = patience
        self._reachable_since: float | None = time.monotonic()
        self._outage_logged = threading.Event()
        super().__init__(url, **kwargs)

    # ------------------------------------------------------------------ the retry loop

    def _patiently(self, what: str, call: Callable[[], T]) -> T:
        delays = backoff_delays(self.patience)
        while True:
            try:
                result = call()
            except Exception as error:
                if not is_connection_error(error):
                    raise
                self._unreachable(what, error)
                pause = next(delays, None)
                if pause is None:
                    raise
                time.sleep(pause)
                continue
            self._reachable()
            return result

    def _unreachable(self, what: str, error: BaseException) -> None:
        self._reachable_since = None
        if not self._outage_logged.is_set():
            self._outage_logged.set()
            wait = f"retrying for up to {self.patience:.0f}s" if self.patience else "giving up"
            log.warning("storage unreachable (%s: %s): %s", what, first_line(error), wait)

    def _reachable(self) -> None:
        if self._reachable_since is None:
            self._reachable_since = time.monotonic()
            if self._outage_logged.is_set():
                self._outage_logged.clear()
                log.warning("storage reachable again")

    def reachable_for(self) -> float:
        """Seconds this process has reached the storage without a break (0 during an outage)."""
        since = self._reachable_since
        return 0.0 if since is None else time.monotonic() - since

    # ------------------------------------------------------------------ heartbeats

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as error:
            if not is_connection_error(error):
                raise
            self._unreachable("heartbeat", error)
            return
        self._reachable()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if self.reachable_for() < grace:
            return []  # live runners may not have had the chance to send a heartbeat yet
        return self._patiently("read", lambda: RDBStorage._get_stale_trial_ids(self, study_id))

    # ------------------------------------------------------------------ writes that set a value

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._patiently("write", lambda: RDBStorage.set_study_user_attr(self, study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._patiently(
            "write", lambda: RDBStorage.set_study_system_attr(self, study_id, key, value)
        )

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        self._patiently(
            "write",
            lambda: RDBStorage._set_trial_param(
                self, trial_id, param_name, param_value_internal, distribution,
                previous_distribution,
            ),
        )  # fmt: skip

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._patiently(
            "report",
            lambda: RDBStorage.set_trial_intermediate_value(
                self, trial_id, step, intermediate_value
            ),
        )

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently("write", lambda: RDBStorage.set_trial_user_attr(self, trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(
            "write", lambda: RDBStorage.set_trial_system_attr(self, trial_id, key, value)
        )

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        attempts = 0

        def call() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # The attempt before may have been committed just before its connection broke.
                if attempts > 1 and state.is_finished():
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and (values is None or stored.values == list(values)):
                        return True
                raise

        return self._patiently("write", call)

    # ------------------------------------------------------------------ reads

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._patiently("read", lambda: RDBStorage.get_study_id_from_name(self, study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._patiently("read", lambda: RDBStorage.get_study_name_from_id(self, study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._patiently("read", lambda: RDBStorage.get_study_directions(self, study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._patiently("read", lambda: RDBStorage.get_study_user_attrs(self, study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._patiently("read", lambda: RDBStorage.get_study_system_attrs(self, study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._patiently("read", lambda: RDBStorage.get_all_studies(self))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._patiently(
            "read",
            lambda: RDBStorage.get_trial_id_from_study_id_trial_number(
                self, study_id, trial_number
            ),
        )

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._patiently("read", lambda: RDBStorage.get_trial(self, trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._patiently(
            "read", lambda: RDBStorage.get_trial_param(self, trial_id, param_name)
        )

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._patiently("read", lambda: RDBStorage.get_trial_user_attrs(self, trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._patiently("read", lambda: RDBStorage.get_trial_system_attrs(self, trial_id))

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        return self._patiently(
            "read",
            lambda: RDBStorage._get_trials(
                self, study_id, states, included_trial_ids, trial_id_greater_than
            ),
        )

    def _get_best_trial_id(self, study_id: int, direction: StudyDirection) -> int:
        return self._patiently(
            "read", lambda: RDBStorage._get_best_trial_id(self, study_id, direction)
        )
