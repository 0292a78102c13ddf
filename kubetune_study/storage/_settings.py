"""Settings of storage access: the local default URL, libpq's connection settings, and the
heartbeat and outage timings a process reads from its environment when it needs them (never
at import, so a process that sets them before opening a storage gets them)."""

from __future__ import annotations

import os
from typing import Any

from kubetune_api.contract import (
    HEARTBEAT_GRACE_PERIOD_ENV,
    HEARTBEAT_INTERVAL_ENV,
    STORAGE_PATIENCE_ENV,
)

__all__ = [
    "DEFAULT_LOCAL_STORAGE",
    "PG_CONNECT_ARGS",
    "grace_period",
    "heartbeat_interval",
    "storage_patience",
]

DEFAULT_LOCAL_STORAGE = "journal:.kubetune/studies.journal"
#: libpq settings of every PostgreSQL connection: give up connecting after 10 s, and notice a
#: peer that vanished (no reset, e.g. a partition) within about half a minute, in flight or idle.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def heartbeat_interval() -> int:
    """Seconds between heartbeats of a running trial (``KUBETUNE_HEARTBEAT_INTERVAL``, 10)."""
    return int(os.environ.get(HEARTBEAT_INTERVAL_ENV, "10"))


def grace_period() -> int:
    """Seconds without a heartbeat after which a trial is stale
    (``KUBETUNE_HEARTBEAT_GRACE_PERIOD``, three heartbeat intervals)."""
    return int(os.environ.get(HEARTBEAT_GRACE_PERIOD_ENV, str(3 * heartbeat_interval())))


def storage_patience() -> float:
    """Seconds a runner waits out an unreachable storage (``KUBETUNE_STORAGE_PATIENCE``, 300;
    see :mod:`kubetune_study.outage`)."""
    return float(os.environ.get(STORAGE_PATIENCE_ENV, "300"))
