"""Pruning a study of several objectives: MO-ASHA, with its state in the storage.

Optuna's pruners compare one intermediate value, and ``optuna.Trial.report`` refuses a study of
several objectives. MO-ASHA (Schmucker et al., 2021, "Multi-objective asynchronous successive
halving") is Optuna's asynchronous successive halving with a rung that ranks the objective
*vectors* of the trials that reached it: by non-dominated sorting, front after front, the front
that overflows the rung's share cut by crowding distance (NSGA-II's ranking). A trial continues
when it is among the top ``1 / reduction_factor`` of the rung (at least one: the first trials
at a rung go on, as in Optuna's ASHA), and is pruned otherwise.

State, all in the storage so that several runners share it and a restarted one resumes it:

* :class:`IntermediateVectors` writes each step's objective vector once, as the trial's system
  attribute ``kubetune:vector:<step>`` (:func:`intermediate_vectors` reads them back);
* :class:`MOASHAPruner` writes the vector a trial reached a rung with as its system attribute
  ``kubetune:moasha_rung_<k>``, as Optuna's ``SuccessiveHalvingPruner`` writes
  ``completed_rung_<k>``. Failed trials do not compete: a preempted trial's retry carries its
  system attributes (Optuna's ``RetryFailedTrialCallback``), so it would count twice.

Steps are those of single-objective pruning (see :mod:`kubetune_study.search`): the resource is
folds trained (``reportEvery: Fold``, each objective's mean over the folds so far) or epochs
(``reportEvery: Epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.spec import Objective

__all__ = [
    "RUNG_PREFIX",
    "VECTOR_PREFIX",
    "IntermediateVectors",
    "MOASHAPruner",
    "crowding_distances",
    "intermediate_vectors",
    "kept_at_rung",
    "non_dominated_fronts",
]

#: A trial's system attribute per step: that step's objective vector.
VECTOR_PREFIX = "kubetune:vector:"
#: A trial's system attribute per rung it reached: the vector it reached it with.
RUNG_PREFIX = "kubetune:moasha_rung_"

Vector = tuple[float, ...]


def non_dominated_fronts(
    points: Sequence[Sequence[float]], n_below: int | None = None
) -> list[list[int]]:
    """The indices of ``points`` (every objective minimised) by non-dominated front, best first.

    A point dominates another when it is no worse in every objective and better in one; equal
    points share a front. Optuna's fast non-dominated sort (NSGA-II's) ranks them; with
    ``n_below``, only the fronts up to the one holding the ``n_below``-th point are exact.
    """
    if not len(points):
        return []
    ranks = _fast_non_domination_rank(np.asarray(points, dtype=float), n_below=n_below)
    return [[int(i) for i in np.flatnonzero(ranks == rank)] for rank in np.unique(ranks)]


def crowding_distances(points: Sequence[Sequence[float]], front: Sequence[int]) -> list[float]:
    """NSGA-II's crowding distance of each point of ``front`` (indices into ``points``), in
    the front's order: the extremes of each objective are infinitely far, the others sum the
    normalised gap between their neighbours."""
    distances = [0.0] * len(front)
    if len(front) <= 2:
        return [math.inf] * len(front)
    for objective in range(len(points[front[0]])):
        order = sorted(range(len(front)), key=lambda i: points[front[i]][objective])
        low, high = points[front[order[0]]][objective], points[front[order[-1]]][objective]
        distances[order[0]] = distances[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:], strict=False):
            gap = points[front[after]][objective] - points[front[before]][objective]
            distances[here] += gap / (high - low)
    return distances


def kept_at_rung(
    points: Sequence[Sequence[float]], maximize: Sequence[bool], keep: int
) -> list[int]:
    """The indices of the ``keep`` best ``points``: whole fronts best first, the front that
    overflows cut by crowding distance (largest first; equal distances: lower index first).

    ``maximize`` says, per objective, whether larger is better.
    """
    signs = [-1.0 if up else 1.0 for up in maximize]
    minimised = [[s * v for s, v in zip(signs, point, strict=True)] for point in points]
    kept: list[int] = []
    for front in non_dominated_fronts(minimised, n_below=keep):
        room = keep - len(kept)
        if room <= 0:
            break
        if len(front) <= room:
            kept.extend(front)
            continue
        distance = crowding_distances(minimised, front)
        ranked = sorted(range(len(front)), key=lambda i: (-distance[i], front[i]))
        kept.extend(front[i] for i in ranked[:room])
    return kept


def intermediate_vectors(trial: FrozenTrial) -> dict[int, Vector]:
    """The objective vector of each step a trial reported, by step."""
    return {
        int(key[len(VECTOR_PREFIX) :]): tuple(float(v) for v in value)
        for key, value in trial.system_attrs.items()
        if key.startswith(VECTOR_PREFIX)
    }


class MOASHAPruner(BasePruner):
    """Asynchronous successive halving over objective vectors (see the module).

    Rung ``k`` is reached at step ``min_resource * reduction_factor ** k``; the study's
    directions say which way each objective is better.
    """

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3) -> None:
        if min_resource < 1:
            raise ValueError(f"min_resource must be at least 1 (got {min_resource})")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2 (got {reduction_factor})")
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        vectors = intermediate_vectors(trial)
        if not vectors:
            return False
        step = max(vectors)
        vector = vectors[step]
        rung = 0
        while f"{RUNG_PREFIX}{rung}" in trial.system_attrs:
            rung += 1
        trials: list[FrozenTrial] | None = None
        maximize = [d == StudyDirection.MAXIMIZE for d in study.directions]
        while step >= self.min_resource * self.reduction_factor**rung:
            if any(math.isnan(v) for v in vector):
                return True
            if trials is None:
                trials = study.get_trials(deepcopy=False)
            key = f"{RUNG_PREFIX}{rung}"
            study._storage.set_trial_system_attr(trial._trial_id, key, list(vector))
            # The trial first: equal crowding distances keep it, as ASHA keeps ties.
            competing = [vector] + [
                tuple(t.system_attrs[key])
                for t in trials
                if key in t.system_attrs
                and t._trial_id != trial._trial_id
                and t.state != TrialState.FAIL
            ]
            keep = max(1, len(competing) // self.reduction_factor)
            if 0 not in kept_at_rung(competing, maximize, keep):
                return True
            rung += 1
        return False


class IntermediateVectors:
    """What a trial of several objectives reports through (the engine's ``VectorReporter``):
    each step's objective vector, written once to the storage, and the study's pruner asked."""

    def __init__(self, trial: optuna.Trial, objectives: Sequence[Objective]) -> None:
        #: The objectives' metrics, in the study's objective order.
        self.metrics = tuple(o.metric for o in objectives)
        self._trial = trial
        # A retry carries the vectors of the steps it replays: they are not written again.
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        self._written = {int(k[len(VECTOR_PREFIX) :]) for k in attrs if k.startswith(VECTOR_PREFIX)}

    def report_vector(self, values: Sequence[float], step: int) -> None:
        if step in self._written:
            return
        self._written.add(step)
        study = self._trial.study
        study._storage.set_trial_system_attr(
            self._trial._trial_id, f"{VECTOR_PREFIX}{step}", [float(v) for v in values]
        )

    def should_prune(self) -> bool:
        study = self._trial.study
        if isinstance(study.pruner, optuna.pruners.NopPruner):
            return False
        return study.pruner.prune(study, study._storage.get_trial(self._trial._trial_id))
