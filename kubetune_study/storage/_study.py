"""The study in its storage: created (or loaded) with its objectives and live budget, and the
trials of a dead local worker queued again."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from kubetune_api.contract import STARTED_ATTR, WORKER_ATTR
from kubetune_api.spec import FieldError, SpecError, StudySpec
from kubetune_study.preemption import preempt
from kubetune_study.pruning import report_every
from kubetune_study.storage._budget import budget_from_spec, read_budget, write_budget
from kubetune_study.storage._claim import ClaimLock

__all__ = ["REPORT_EVERY_ATTR", "ensure_study", "requeue_trials_of_worker"]

#: The cadence the study's trials report at (``Fold`` or ``Epoch``), recorded when a study is
#: first created or resumed by a kubetune with ``reportEvery: Auto``.
REPORT_EVERY_ATTR = "kubetune.reportEvery"


def ensure_study(storage: BaseStorage, name: str, spec: StudySpec) -> optuna.Study:
    """Create the study (or load it) and store the spec's budget as the live budget.

    The objectives of an existing study cannot change: its trials were scored against them.
    """
    directions = [d.lower() for d in spec.directions]
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=[StudyDirection[d.upper()] for d in directions],
        load_if_exists=True,
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != directions and len(existing) == len(directions) == 1:
        raise SpecError(
            [
                FieldError(
                    "spec.objective.direction",
                    f"study {name!r} already exists in the storage with direction "
                    f"{existing[0].capitalize()}; the objective of a study cannot change "
                    "(use a new metadata.name)",
                )
            ]
        )
    metrics = [o.metric for o in spec.all_objectives]
    # Named objectives: optuna-dashboard and the report show the metric, not "Objective 0".
    if study.metric_names is None and existing == directions:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)
    stored = study.metric_names
    if existing != directions or (spec.multi_objective and stored != metrics):
        field = "spec.objectives" if spec.multi_objective else "spec.objective"
        raise SpecError(
            [
                FieldError(
                    field,
                    f"study {name!r} already exists in the storage with "
                    f"{_describe_objectives(existing, stored)}; the objectives of a study "
                    "cannot change (use a new metadata.name)",
                )
            ]
        )
    _keep_report_cadence(study, name, spec)
    if STARTED_ATTR not in study.user_attrs:
        study.set_user_attr(STARTED_ATTR, datetime.now(UTC).isoformat())
    budget = budget_from_spec(spec)
    if read_budget(study) != budget:
        write_budget(study, budget)
    return study


def _keep_report_cadence(study: optuna.Study, name: str, spec: StudySpec) -> None:
    """Record the cadence the study's trials report at, and refuse a spec that leaves it to
    ``Auto`` where ``Auto`` would now change it: the pruner would compare steps of two kinds.
    A study started before ``reportEvery: Auto`` existed recorded nothing: it reported per
    ``Fold``, the old default. A cadence the spec gives is taken as asked."""
    resolved = report_every(spec)
    recorded = study.user_attrs.get(REPORT_EVERY_ATTR)
    if recorded is None and STARTED_ATTR in study.user_attrs:
        recorded = "Fold" if study.get_trials(deepcopy=False) else None
    if recorded not in (None, resolved) and spec.training.report_every == "Auto":
        raise SpecError(
            [
                FieldError(
                    "spec.training.reportEvery",
                    f"study {name!r} reported per {recorded} (the default when it started), "
                    f"and Auto now reports per {resolved}; set reportEvery: {recorded} to "
                    f"resume it as it ran, or {resolved} to change its pruning steps",
                )
            ]
        )
    if study.user_attrs.get(REPORT_EVERY_ATTR) != resolved:
        study.set_user_attr(REPORT_EVERY_ATTR, resolved)


def _describe_objectives(directions: list[str], metrics: list[str] | None) -> str:
    if len(directions) == 1:
        return f"one objective ({directions[0].capitalize()})"
    names = metrics or ["?"] * len(directions)
    listed = ", ".join(f"{m} ({d.capitalize()})" for m, d in zip(names, directions, strict=True))
    return f"{len(directions)} objectives: {listed}"


def requeue_trials_of_worker(study: optuna.Study, worker: str, lock: ClaimLock) -> list[int]:
    """Preempt the RUNNING trials of a dead worker (each is failed and queued again, under
    ``lock``, the study's claim lock).

    The embedded journal storage has no heartbeats, so the local supervisor calls this when a
    worker process exits abnormally. Same outcome as a heartbeat-stale trial on PostgreSQL.
    """
    return [
        trial.number
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if trial.user_attrs.get(WORKER_ATTR) == worker
        and preempt(study, trial._trial_id, "RunnerExited", lock)
    ]
