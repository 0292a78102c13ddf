"""What a runner pod's process does as a pod: its metrics endpoint and its signals."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from kubetune_api.contract import METRICS_PORT_ENV
from trial_runner.cli._common import CliError

__all__ = ["MULTIPROCESS_DIR_ENV", "metrics_port", "on_termination", "serve_process_metrics"]

log = logging.getLogger("kubetune")

#: Where the processes of one runner pod keep their metrics for the pod's endpoint
#: (prometheus_client's multiprocess mode reads this variable).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_port() -> int | None:
    """``$KUBETUNE_METRICS_PORT`` (set on runner pods by the operator), if set."""
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise CliError(f"{METRICS_PORT_ENV}: expected a port number, got {raw!r}")
    return int(raw)


def serve_process_metrics(port: int, directory: str) -> None:
    """Serve the metrics every process of the pod records in ``directory``, summed."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from kubetune_study.metrics import start_metrics_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_metrics_server(port, registry)


def on_termination() -> threading.Event:
    """An event set by SIGTERM or SIGINT (a pod's supervisor forwards them to its processes)."""
    stopping = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the runner processes", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping
