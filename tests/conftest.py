"""Shared fixtures: a real PostgreSQL server (pytest-postgresql) and study files."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories

from tests.helpers import IN_CI

REPO = Path(__file__).resolve().parent.parent
SUPPORT = Path(__file__).resolve().parent / "support"
EXAMPLES = REPO / "examples"

postgresql_proc = factories.postgresql_proc(
    executable=str(SUPPORT / "pg_ctl"),
    host="127.0.0.1",
    port=None,  # a free port, so parallel runs do not collide
    password="kubetune",
    dbname="kubetune_tests",
)
postgresql = factories.postgresql("postgresql_proc")
#: A second server, only for tests that stop and start it (storage outages): stopping the
#: suite's shared server would cut every other test's connections.
restartable_postgresql_proc = factories.postgresql_proc(
    executable=str(SUPPORT / "pg_ctl"),
    host="127.0.0.1",
    port=None,
    password="kubetune",
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


class RestartablePostgres:
    """A fresh database on :data:`restartable_postgresql_proc`, whose server the test may stop
    and start for real (``pg_ctl stop -m fast``: every connection is cut)."""

    def __init__(self, server: Any, dbname: str) -> None:
        self.server = server
        self.host, self.port = str(server.host), int(server.port)
        self.url = f"postgresql://{server.user}:kubetune@{self.host}:{self.port}/{dbname}"

    def url_via(self, port: int) -> str:
        """The same database through a proxy listening on ``127.0.0.1:port``."""
        return self.url.replace(f"@{self.host}:{self.port}/", f"@127.0.0.1:{port}/")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        if not self.server.running():
            self.server.start()


@pytest.fixture
def restartable_postgres(restartable_postgresql_proc: Any) -> Iterator[RestartablePostgres]:
    import psycopg2

    server = restartable_postgresql_proc
    dbname = f"kt_{uuid.uuid4().hex[:10]}"

    def admin() -> Any:
        connection = psycopg2.connect(
            host=server.host, port=server.port, user=server.user,
            password="kubetune", dbname="postgres",
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
