"""A claimed trial's finished folds: those a retry resumes after, and each fold kept with the
trial as it finishes (:data:`~kubetune_api.contract.FOLDS_ATTR`, :mod:`trial_runner.engine`)."""

from __future__ import annotations

import logging

import optuna

from kubetune_api.contract import FOLDS_ATTR
from kubetune_study.preemption import retried_from
from trial_runner.engine import FoldRecord, folds_from_attr, folds_to_attr

__all__ = ["TrialFolds"]

log = logging.getLogger("kubetune.runner")


class TrialFolds:
    """The folds of ``trial``: :attr:`resume` (what an earlier run of it finished) and
    :meth:`keep` for each fold this run finishes."""

    def __init__(self, trial: optuna.Trial, folds: int) -> None:
        self.trial = trial
        # A running trial's system attributes are the storage's (optuna.Trial has none); the
        # trial read them when it was created (a retry's are set when it is queued), so no
        # storage read is needed here.
        #: The trial this one retries (it trains as that one would have), if any.
        self.origin = retried_from(trial._cached_frozen_trial)
        self.resume = folds_from_attr(trial.user_attrs.get(FOLDS_ATTR), folds)
        self._finished: list[FoldRecord] = list(self.resume)
        if self.origin is not None:
            log.info(
                "trial %d resumes trial %d at fold %d of %d",
                trial.number,
                self.origin,
                len(self.resume) + 1,
                folds,
            )

    def keep(self, record: FoldRecord) -> None:
        """A fold finished: store it with the trial."""
        self._finished.append(record)
        self.trial.set_user_attr(FOLDS_ATTR, folds_to_attr(self._finished))
