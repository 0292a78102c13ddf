"""Shared fixtures: a real PostgreSQL server (pytest-postgresql) and study files."""

from __future__ import annotations

import shutil
import sys
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
    if "postgres_url" in request.fixturenames:
        _require_postgres()


@pytest.fixture
def kubetune_cmd() -> list[str]:
    """The installed CLI, run with this interpreter."""
    return [sys.executable, "-m", "trial_runner.cli"]
