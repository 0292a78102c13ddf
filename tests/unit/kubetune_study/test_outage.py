"""What counts as a storage outage and how long a runner waits one out (pure parts)."""

from __future__ import annotations

import itertools

import optuna
import psycopg2
import pytest
import sqlalchemy.exc

from kubetune_study.outage import FIRST_DELAY, LONGEST_DELAY, backoff_delays, is_connection_error


def test_backoff_doubles_to_a_ceiling_and_adds_up_to_the_patience() -> None:
    assert list(backoff_delays(0)) == []
    delays = list(backoff_delays(60))
    assert delays[:3] == [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY]
    assert max(delays) == LONGEST_DELAY
    assert sum(delays) == pytest.approx(60)
    assert list(itertools.islice(backoff_delays(1), 5)) == [0.5, 0.5]


def _wrapped(error: BaseException) -> optuna.exceptions.StorageInternalError:
    """As Optuna's RDB storage raises a failed commit."""
    try:
        raise optuna.exceptions.StorageInternalError("commit failed") from error
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


def test_broken_connections_are_outages_rejected_statements_are_not() -> None:
    dropped = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg2.OperationalError("closed"))
    assert is_connection_error(dropped)
    assert is_connection_error(_wrapped(dropped))
    assert is_connection_error(psycopg2.InterfaceError("connection already closed"))
    rejected = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert not is_connection_error(rejected)
    assert not is_connection_error(_wrapped(rejected))
    assert not is_connection_error(ValueError("not a storage error"))
