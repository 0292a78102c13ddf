"""A runner process as such: its id in the study, its signals, and waiting for its study."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from kubetune_api.contract import CPU_THREADS_ENV, LOCAL_WORKERS_ENV
from kubetune_study.storage import open_storage, storage_patience

__all__ = ["install_sigterm", "wait_for_study", "worker_id"]

log = logging.getLogger("kubetune.runner")


def worker_id(pid: int | None = None) -> str:
    """The id of a runner process (this one by default) in the trials it runs: ``host:pid``."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


def install_sigterm(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (from the main thread only: elsewhere, nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then releasing the trial", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_for_study(storage_url: str, study_name: str, timeout: float = 60.0) -> None:
    """Block until the study exists (the operator may still be creating it)."""
    storage = open_storage(storage_url, heartbeat=False, patience=storage_patience())
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            storage.get_study_id_from_name(study_name)
            return
        except KeyError:
            if time.monotonic() > deadline:
                raise
            if not said:
                log.info("waiting up to %gs for study %s to exist", timeout, study_name)
                said = True
            time.sleep(1)


def configure_threads() -> int:
    """Intra-op threads: the CPUs this process may use divided among local runners.

    Small models gain nothing from many intra-op threads, and oversubscribed OpenMP threads
    spin; several runner processes share the machine instead.
    """
    import torch

    explicit = os.environ.get(CPU_THREADS_ENV)
    if explicit:
        threads = max(1, int(explicit))
    else:
        usable = len(os.sched_getaffinity(0))
        local = max(1, int(os.environ.get(LOCAL_WORKERS_ENV, "1")))
        threads = max(1, usable // local)
    torch.set_num_threads(threads)
    return threads
