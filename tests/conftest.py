"""Shared fixtures: a real PostgreSQL server (pytest-postgresql) and the CLI command.

What they are built on is in :mod:`tests.harness` (:mod:`tests.harness.postgres`)."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories

from tests.harness.helpers import IN_CI
from tests.harness.postgres import PASSWORD, PG_CTL, RestartablePostgres

postgresql_proc = factories.postgresql_proc(
    executable=str(PG_CTL),
    host="127.0.0.1",
    port=None,  # a free port, so parallel runs do not collide
    password=PASSWORD,
    dbname="kubetune_tests",
)
postgresql = factories.postgresql("postgresql_proc")
#: A second server, only for tests that stop and start it (storage outages): stopping the
#: suite's shared server would cut every other test's connections.
restartable_postgresql_proc = factories.postgresql_proc(
    executable=str(PG_CTL),
    host="127.0.0.1",
    port=None,
    password=PASSWORD,
    dbname="kubetune_outages",
)


def _require_postgres() -> None:
    """Outside CI a machine without PostgreSQL skips; in CI it is a failure."""
    if any(Path(p).exists() for p in ["/usr/lib/postgresql"]) and shutil.which("runuser"):
        return
    message = "PostgreSQL server binaries not found (apt-get install postgresql)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url(postgresql: Any) -> Iterator[str]:
    """URL of a fresh database on the suite's PostgreSQL server."""
    info = postgresql.info
    yield f"postgresql://{info.user}:kubetune@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture(autouse=True)
def _postgres_present(request: pytest.FixtureRequest) -> None:
    if {"postgres_url", "restartable_postgres"} & set(request.fixturenames):
        _require_postgres()


@pytest.fixture
def restartable_postgres(restartable_postgresql_proc: Any) -> Iterator[RestartablePostgres]:
    import psycopg2

    server = restartable_postgresql_proc
    dbname = f"kt_{uuid.uuid4().hex[:10]}"

    def admin() -> Any:
        connection = psycopg2.connect(
            host=server.host, port=server.port, user=server.user,
            password=PASSWORD, dbname="postgres",
        )  # fmt: skip
        connection.autocommit = True
        return connection

    connection = admin()
    with connection.cursor() as cur:
        cur.execute(f"CREATE DATABASE {dbname}")
    connection.close()
    database = RestartablePostgres(server, dbname)
    try:
        yield database
    finally:
        database.start()  # a test that failed while the server was down leaves it up again
        connection = admin()
        with connection.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        connection.close()


@pytest.fixture
def kubetune_cmd() -> list[str]:
    """The installed CLI, run with this interpreter."""
    return [sys.executable, "-m", "trial_runner.cli"]
