"""Where a study stands, computed from its trials alone (pure; no storage access).

Every runner process, the local CLI and the operator read a study's state through
:func:`summarize`, so they agree on the budget, the current stage and the best trial without
talking to each other: the storage is the only shared state.

Budget rules:
    * ``maxTrials`` counts trials that finished COMPLETE or PRUNED, plus those RUNNING or
      WAITING (they will finish). A claim is refused once that sum reaches the budget.
    * A *preempted* trial (its runner was stopped or died: :func:`is_preempted`) is counted
      apart, never as a failure: it is re-queued and its retry stands in for it.
    * ``maxFailedTrials``, ``timeout``: once reached, nothing new is claimed.
    * The failure breaker: once the last ``maxConsecutiveFailedTrials`` finished trials (by the
      time they finished; default 10) all failed, with no complete or pruned trial between
      them, nothing new is claimed either. A task that fails every trial therefore stops after
      a handful of trials even without ``maxFailedTrials``. Either way the study has failed,
      and :attr:`StudyProgress.failure` says why in one sentence (the runner's log, ``kubetune
      run`` and the operator's ``Failed`` condition all show it).
    * A trial with several objectives counts exactly like one with one.
    * Trials added from another study by a warm start (``PRIOR_ATTR``) inform the sampler
      only: they are not counted, belong to no stage and are never the best.

Best: with one objective, the best complete trial (the first of equals). With several, the
Pareto front (:mod:`kubetune_study.pareto`); a stage's best, whose parameters later stages fix,
is then the trial best by the first objective, ties broken by the next ones
(:func:`kubetune_api.spec.best_first_key`), which always lies on the stage's front.

Modules: :mod:`._state` (the budget, :class:`StudyProgress` and its parts, what one trial
says), :mod:`._tally` (:func:`summarize` and :class:`ProgressTally`), :mod:`._claim`
(:func:`plan_claim`: what a runner does next).
"""

from __future__ import annotations

from kubetune_study.progress._claim import Claim, overclaimed, plan_claim
from kubetune_study.progress._state import (
    FAILED_OUTCOMES,
    BudgetState,
    StageSummary,
    StudyProgress,
    TelemetrySummary,
    is_preempted,
    retried_numbers,
    trial_telemetry,
)
from kubetune_study.progress._tally import (
    ProgressTally,
    summarize,
    summarize_telemetry,
    trials_by_process,
)

__all__ = [
    "FAILED_OUTCOMES",
    "BudgetState",
    "Claim",
    "ProgressTally",
    "StageSummary",
    "StudyProgress",
    "TelemetrySummary",
    "is_preempted",
    "overclaimed",
    "plan_claim",
    "retried_numbers",
    "summarize",
    "summarize_telemetry",
    "trial_telemetry",
    "trials_by_process",
]
