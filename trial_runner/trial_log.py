"""What a runner logs of its trials: its own line for each finished trial, and none of
Optuna's "Trial N failed" tracebacks for trials that did not fail as the task's failures."""

from __future__ import annotations

import logging

import optuna

__all__ = ["QuietPreemptedTrials", "log_finished"]

log = logging.getLogger("kubetune.runner")


def log_finished(trial: optuna.trial.FrozenTrial) -> None:
    """The runner's line for a finished trial, in place of Optuna's, which looks up the study's
    best trial in the storage on every trial (a query over all of the study's trials)."""
    values = trial.values if trial.values is not None else "-"
    log.info("trial %d %s: %s %s", trial.number, trial.state.name.lower(), values, trial.params)


class QuietPreemptedTrials(logging.Filter):
    """Drops Optuna's "Trial N failed" warnings (with a traceback) for preempted trials (they
    did not fail) and for trials past a time or stall limit: the runner says what happened to
    them."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    @classmethod
    def install(cls) -> QuietPreemptedTrials:
        logger = logging.getLogger("optuna.study._optimize")
        for existing in logger.filters:
            if isinstance(existing, cls):
                return existing
        quiet = cls()
        logger.addFilter(quiet)
        return quiet

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed") for n in self.numbers)
