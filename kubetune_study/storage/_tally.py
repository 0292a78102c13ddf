"""Progress read incrementally: one tally per storage object and study, kept for the process."""

from __future__ import annotations

import threading
import weakref

import optuna
from optuna.storages import BaseStorage

from kubetune_api.spec import StudySpec
from kubetune_study.progress import ProgressTally, StudyProgress
from kubetune_study.storage._budget import budget_from_spec, budget_of, elapsed_of

__all__ = ["read_progress"]

#: One progress tally per storage object and study: finished trials are folded in once.
_TALLIES: weakref.WeakKeyDictionary[BaseStorage, dict[tuple[int, tuple[str, ...]], ProgressTally]]
_TALLIES = weakref.WeakKeyDictionary()
_TALLIES_LOCK = threading.Lock()


def read_progress(study: optuna.Study, spec: StudySpec) -> StudyProgress:
    """Where the study stands (:func:`kubetune_study.progress.summarize`), read incrementally.

    The trials come from the study's storage, which for PostgreSQL is Optuna's cached
    storage: it re-reads only unfinished and new trials. The tally kept for the storage object
    folds each finished trial in once, so a read costs what changed since the last one on the
    same storage object, not the whole study; the first read of a study is the full one.
    """
    user_attrs = study.user_attrs
    budget = budget_of(user_attrs) or budget_from_spec(spec)
    trials = study.get_trials(deepcopy=False)  # no lock held while reading
    key = (study._study_id, tuple(spec.directions))
    with _TALLIES_LOCK:
        tallies = _TALLIES.setdefault(study._storage, {})
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = ProgressTally(spec.directions)
        tally.update(trials)
        return tally.progress(budget, elapsed_of(user_attrs))
