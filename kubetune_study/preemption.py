"""Preempted trials: a trial whose runner was stopped or died is re-queued, not failed.

A runner pod is deleted, its node drained, its spot instance reclaimed, or its process killed:
its trial did nothing wrong. Such a trial is *preempted*:

* it is marked (:data:`~kubetune_api.contract.PREEMPTED_ATTR`, with the reason) and failed, so
  nothing else runs it under its number;
* a retry with the same parameters is queued (:class:`ResumingRetry`, Optuna's
  ``RetryHeartbeatStaleTrialCallback``) carrying the trial's user attributes, among them the folds
  it finished (:data:`~kubetune_api.contract.FOLDS_ATTR`), so the retry resumes at the next fold;
* it is counted apart (:func:`kubetune_study.progress.is_preempted`): neither a failure nor part of
  the budget, which its retry stands in for.

Who notices: the runner itself on SIGTERM (``Terminated``); any runner claiming a trial, and the
operator, when a trial's heartbeats stop (``HeartbeatLost``, :func:`release_stale_trials`);
``kubetune run`` when one of its runner processes dies (``RunnerExited``). A trial preempted
more than :data:`MAX_RETRY` times is not queued again.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import PREEMPTED_ATTR, TELEMETRY_ATTR, WORKER_ATTR
from kubetune_study.outage import PatientRDBStorage

if TYPE_CHECKING:  # the storage package imports this module
    from kubetune_study.storage import ClaimLock

__all__ = [
    "MAX_RETRY",
    "PreemptionReason",
    "ResumingRetry",
    "mark_failed",
    "preempt",
    "release_stale_trials",
    "retried_from",
]

log = logging.getLogger("kubetune.preemption")

#: How many times one trial is re-queued after preemptions.
MAX_RETRY = 3

PreemptionReason = Literal["Terminated", "HeartbeatLost", "RunnerExited", "ClaimInterrupted"]


_OF_THE_RUN = (PREEMPTED_ATTR, WORKER_ATTR, TELEMETRY_ATTR)


class ResumingRetry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (same parameters, queued as WAITING, its system attributes
    ``failed_trial`` and ``retry_history``), with the failed trial's user attributes, the finished
    folds among them, but not what belonged to the failed run alone (the preempted mark, its
    runner, telemetry)."""

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        carried = copy.copy(trial)
        carried.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in _OF_THE_RUN}
        super().__call__(study, carried)


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial that ``trial`` retries (the first of a chain of retries)."""
    number = trial.system_attrs.get("failed_trial")
    return int(number) if isinstance(number, int) else None


def preempt(study: optuna.Study, trial_id: int, reason: PreemptionReason, lock: ClaimLock) -> bool:
    """Mark a running trial preempted, fail it and queue its retry, under the study's claim
    lock (taken here unless the caller holds it).

    The budget counts the trial while it runs and its retry once queued, but neither in
    between: a runner claiming between the two writes would see one trial fewer than there
    are and start one past the budget.

    Returns False when the trial had already finished (another process got there first).
    """
    storage = study._storage
    with lock.holding():
        if not mark_failed(storage, trial_id, PREEMPTED_ATTR, reason):
            return False
        ResumingRetry()(study, storage.get_trial(trial_id))
    return True


def mark_failed(storage: BaseStorage, trial_id: int, key: str, reason: str) -> bool:
    """Set the user attribute ``key`` of a running trial to ``reason`` and fail it, from any
    process or thread (the attribute is written first, so no reader sees the failure without
    its reason). Returns False when the trial had already finished."""
    try:
        storage.set_trial_user_attr(trial_id, key, reason)
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def release_stale_trials(
    study: optuna.Study, grace_seconds: float, lock: ClaimLock, *, orphans: bool = True
) -> list[int]:
    """Preempt the trials no runner is running any more (under ``lock``, the study's claim
    lock, taken only when there are some); returns their numbers.

    * ``HeartbeatLost``: running trials whose heartbeats stopped (RDB storages with heartbeats;
      :class:`~kubetune_study.outage.PatientRDBStorage` decides what is stale, outages included).
    * ``ClaimInterrupted``: running trials that never named their runner
      (:data:`~kubetune_api.contract.WORKER_ATTR`, set right after a claim) although they
      started more than ``grace_seconds`` ago: their runner lost its claim half-way (the
      storage failed between creating the trial and starting it), so no heartbeat will ever
      make them stale. Looking for them reads the study's running trials; ``orphans=False``
      skips that (a runner looks once per half grace period, not on every claim).
    """
    storage = study._storage
    stale: list[tuple[int, PreemptionReason]] = []
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        # Optuna's own fail_stale_trials reads the same list; it is private there too.
        stale += [(i, "HeartbeatLost") for i in storage._get_stale_trial_ids(study._study_id)]
    if orphans and _reachable_for(storage) >= grace_seconds:
        started_before = dt.datetime.now() - dt.timedelta(seconds=grace_seconds)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            start = trial.datetime_start
            if WORKER_ATTR not in trial.user_attrs and start is not None and start < started_before:
                stale.append((trial._trial_id, "ClaimInterrupted"))
    released: list[int] = []
    for trial_id, reason in dict(stale).items():
        if preempt(study, trial_id, reason, lock):
            number = storage.get_trial(trial_id).number
            log.info("trial %d preempted (%s): queued again", number, reason)
            released.append(number)
    return released


def _reachable_for(storage: BaseStorage) -> float:
    """How long the storage has been reachable, as the patient storage under the cache saw it
    (other storages have no outages to wait out)."""
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, PatientRDBStorage):
        return backend.reachable_for()
    return float("inf")
