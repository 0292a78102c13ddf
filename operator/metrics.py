"""Prometheus metrics of the operator: what it sees of each study, and how its passes go.

Per-study metrics are labelled ``namespace`` and ``study`` and are set from the
:class:`~kubetune_api.status.StudyStatus` a pass decided (:meth:`OperatorMetrics.observe`), so
they say what ``kubectl get hpostudies`` says; a deleted study's series are removed
(:meth:`OperatorMetrics.forget`). Nothing is labelled per trial or per pod, so the number of
series is bounded by the studies. The endpoint is served by
:func:`kubetune_study.metrics.start_metrics_server` on ``KUBETUNE_METRICS_PORT``.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from kubetune_api.status import CONDITION_TYPES, StudyStatus

__all__ = ["CONDITION_STATUSES", "TRIAL_STATES", "OperatorMetrics", "process_metrics"]

#: ``state`` label values of ``kubetune_study_trials``: the fields of ``status.trials``.
TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")
#: ``status`` label values of ``kubetune_study_condition``.
CONDITION_STATUSES = ("True", "False", "Unknown")
_STUDY = ("namespace", "study")
_Family = TypeVar("_Family", Gauge, Counter)


#: The per-study metrics: attribute, kind, name, help and the label names after ``_STUDY``.
_STUDY_METRICS: tuple[tuple[str, type[Gauge] | type[Counter], str, str, tuple[str, ...]], ...] = (
    (
        "condition",
        Gauge,
        "kubetune_study_condition",
        "1 for the status each condition of a study has (Ready, Succeeded, Failed, "
        "Suspended), 0 for the others; sum by condition for studies by condition.",
        ("condition", "status"),
    ),
    (
        "trials",
        Gauge,
        "kubetune_study_trials",
        "Trials of a study by state, as its status reports them.",
        ("state",),
    ),
    (
        "budget",
        Gauge,
        "kubetune_study_trials_budget",
        "spec.budget.maxTrials as the runners see it.",
        (),
    ),
    ("best_value", Gauge, "kubetune_study_best_value", "The best objective value so far.", ()),
    (
        "runners_desired",
        Gauge,
        "kubetune_study_runners_desired",
        "Runner pods the study wants now.",
        (),
    ),
    ("runners_ready", Gauge, "kubetune_study_runners_ready", "Runner pods running and ready.", ()),
    (
        "runners_waiting",
        Gauge,
        "kubetune_study_runners_waiting_for_admission",
        "Runner pods Kueue has not admitted yet.",
        (),
    ),
    (
        "trials_per_device",
        Gauge,
        "kubetune_study_trials_per_device",
        "Runner processes (trials) each runner pod runs on its device.",
        (),
    ),
    (
        "overhead",
        Gauge,
        "kubetune_study_trial_overhead_seconds",
        "Mean seconds of a finished trial that were not training or validation.",
        (),
    ),
    (
        "trials_per_process",
        Gauge,
        "kubetune_study_trials_per_process",
        "Finished trials per warm runner process.",
        (),
    ),
    (
        "reconcile_errors",
        Counter,
        "kubetune_reconcile_errors",
        "Reconcile passes that raised (kopf retries them).",
        (),
    ),
    (
        "api_errors",
        Counter,
        "kubetune_api_errors",
        "Kubernetes API requests of a pass that failed, by HTTP status.",
        ("code",),
    ),
    (
        "storage_errors",
        Counter,
        "kubetune_storage_errors",
        "Passes that could not read the study's Optuna storage.",
        (),
    ),
)


class OperatorMetrics:
    """The operator's metrics, registered in ``registry`` (one instance per registry)."""

    condition: Gauge
    trials: Gauge
    budget: Gauge
    best_value: Gauge
    runners_desired: Gauge
    runners_ready: Gauge
    runners_waiting: Gauge
    trials_per_device: Gauge
    overhead: Gauge
    trials_per_process: Gauge
    reconcile_errors: Counter
    api_errors: Counter
    storage_errors: Counter

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        for attribute, kind, name, documentation, labels in _STUDY_METRICS:
            family = kind(name, documentation, [*_STUDY, *labels], registry=registry)
            setattr(self, attribute, family)
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Seconds one reconcile pass over a study took (storage, API reads and writes).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        # The label values each study has used, so forget() removes exactly those series.
        self._seen: dict[tuple[str, str], set[tuple[Gauge | Counter, tuple[str, ...]]]] = {}

    def observe(self, namespace: str, study: str, status: StudyStatus) -> None:
        """Set the study's gauges from the status a pass decided (fields it left unset keep
        their last value, as the status itself does)."""
        key = (namespace, study)
        for type_ in CONDITION_TYPES:
            found = status.condition(type_)
            if found is None:
                continue
            for value in CONDITION_STATUSES:
                self._gauge(self.condition, key, type_, value).set(found.status == value)
        if status.trials is not None:
            counts = status.trials.model_dump()
            for state in TRIAL_STATES:
                if counts.get(state) is not None:
                    self._gauge(self.trials, key, state).set(counts[state])
            if status.trials.budget is not None:
                self._gauge(self.budget, key).set(status.trials.budget)
        if status.best is not None and status.best.value is not None:
            self._gauge(self.best_value, key).set(float(status.best.value))
        if status.runners is not None:
            if status.runners.desired is not None:
                self._gauge(self.runners_desired, key).set(status.runners.desired)
            if status.runners.ready is not None:
                self._gauge(self.runners_ready, key).set(status.runners.ready)
            if status.runners.waiting_for_admission is not None:
                waiting = status.runners.waiting_for_admission
                self._gauge(self.runners_waiting, key).set(waiting)
        if status.sizing is not None and status.sizing.trials_per_device is not None:
            self._gauge(self.trials_per_device, key).set(status.sizing.trials_per_device)
        telemetry = status.telemetry
        if telemetry is not None:
            if telemetry.overhead_seconds is not None:
                self._gauge(self.overhead, key).set(float(telemetry.overhead_seconds))
            if telemetry.trials_per_process is not None:
                per_process = float(telemetry.trials_per_process)
                self._gauge(self.trials_per_process, key).set(per_process)

    def storage_error(self, namespace: str, study: str) -> None:
        self._gauge(self.storage_errors, (namespace, study)).inc()

    def reconcile_error(self, namespace: str, study: str, api_status: int | None = None) -> None:
        """A pass raised; ``api_status`` is the HTTP status when the API refused a request."""
        key = (namespace, study)
        self._gauge(self.reconcile_errors, key).inc()
        if api_status is not None:
            self._gauge(self.api_errors, key, str(api_status)).inc()

    def forget(self, namespace: str, study: str) -> None:
        """Remove every series of a deleted study."""
        for family, labels in self._seen.pop((namespace, study), set()):
            family.remove(*labels)

    def _gauge(self, family: _Family, key: tuple[str, str], *extra: str) -> _Family:
        """The series of ``family`` for this study (and ``extra`` label values)."""
        labels = (*key, *extra)
        self._seen.setdefault(key, set()).add((family, labels))
        return family.labels(*labels)


@functools.cache
def process_metrics() -> OperatorMetrics:
    """The metrics of this process, in the default registry, which holds one set: an operator
    started again in the same process (as tests do) goes on with the same series."""
    return OperatorMetrics()
