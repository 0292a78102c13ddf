"""A runner process sharing its device gives up after repeated out-of-memory trials, so that
the operator can run fewer per device."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubetune_study.progress import trial_telemetry

__all__ = ["OUT_OF_MEMORY_TRIALS", "OutOfMemoryGuard"]

log = logging.getLogger("kubetune")

#: Trials that ran out of memory (retried at half the micro-batch, or pruned) after which a
#: runner process sharing its device with others gives up, so that fewer share it.
OUT_OF_MEMORY_TRIALS = 3


class OutOfMemoryGuard:
    """Stops a runner process after ``limit`` of its trials ran out of memory (0: never).

    Called with each trial the runner finishes; the stop takes effect before the next claim,
    so no trial is lost.
    """

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit = limit
        self.stop = stop
        self.count = 0

    @property
    def tripped(self) -> bool:
        return bool(self.limit) and self.count >= self.limit

    def __call__(self, trial: Any) -> None:
        telemetry = trial_telemetry(trial)
        if telemetry.get("oom_retries") or telemetry.get("stop_reason") == "OutOfMemory":
            self.count += 1
        if self.tripped:
            log.warning("%d trials ran out of memory on a shared device: stopping", self.count)
            self.stop.set()
