"""Warm starts: a study's first trials from given points, or from another study's results.

``spec.warmStart`` is applied by whoever prepares the study (``kubetune run`` and the operator,
right after :func:`kubetune_study.storage.ensure_study`), under the study's claim lock, so runners
claiming trials never see it half done:

* ``points`` are queued as WAITING trials of the first stage (``study.enqueue_trial``); runners
  run queued trials before sampling new ones;
* ``fromStudy`` with ``mode: AddTrials`` copies the source's complete trials into this study
  (``study.add_trials``), tagged :data:`~kubetune_api.contract.PRIOR_ATTR`: samplers learn from
  them, while the budget, stages, best trial and Pareto front leave them out;
* ``fromStudy`` with ``mode: Reevaluate`` queues the source's ``topK`` best trials like points.

Only what fits this search space is carried over. A source trial whose value of a parameter is
not a value of this study's distribution (Optuna's own test, :func:`~kubetune_study.search.
in_distribution`) is left out and reported by trial and parameter; a source parameter this
search space lacks is dropped and reported by name. Nothing here fails the study.

Applied once: the study records a digest of the warm start it applied and the report
(:data:`~kubetune_api.contract.WARM_START_ATTR`); a restart, a second ``kubetune run`` or the
operator's next pass finds the record and does nothing. Queued points also go through
``enqueue_trial(skip_if_exists=True)`` and copied trials are matched by their tag, so even an
interrupted application never queues or copies a trial twice.

Modules: :mod:`._report` (:class:`WarmStartReport`), :mod:`._carry` (source trials as this
study sees them), :mod:`._apply` (:func:`apply_warm_start`).
"""

from __future__ import annotations

from kubetune_study.warmstart._apply import (
    apply_warm_start,
    queue_room,
    recorded_report,
    source_study_name,
)
from kubetune_study.warmstart._carry import Carried, carry, prior_values, rank_for_reevaluation
from kubetune_study.warmstart._report import WarmStartReport

__all__ = [
    "Carried",
    "WarmStartReport",
    "apply_warm_start",
    "carry",
    "prior_values",
    "queue_room",
    "rank_for_reevaluation",
    "recorded_report",
    "source_study_name",
]
