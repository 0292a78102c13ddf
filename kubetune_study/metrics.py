"""Prometheus metrics of a runner process, and the HTTP endpoint both kubetune processes use.

Runners are long-lived (one pod runs many trials), so Prometheus scrapes them like any
service (the pull model): the operator gives each runner pod a ``metrics`` port and the
``prometheus.io/*`` annotations, and the chart's optional PodMonitor selects them. A
Pushgateway would keep the series of finished pods forever and adds a component to run.

Every metric is named ``kubetune_runner_*`` and labelled with the study's ``namespace`` and
``study`` only (Prometheus adds the pod): no per-trial label, so the number of series stays
bounded by the studies. A pod whose device several runner processes share serves their sum
(prometheus_client's multiprocess mode; the gauges show the most recent trial of any).
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from kubetune_study.progress import trial_telemetry

__all__ = ["RunnerMetrics", "start_metrics_server"]

log = logging.getLogger("kubetune.metrics")

#: Trial wall times run from seconds (small models) to hours.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
#: Warm runners pay hundredths of a second per trial; a cold start pays seconds.
OVERHEAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The finished states a runner counts (``state`` label values).
FINISHED_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}
_LABELS = ("namespace", "study")


class RunnerMetrics:
    """The metrics of one runner process's study, registered in ``registry``.

    Not thread-safe to create (prometheus_client refuses a second registration of a name in
    one registry): one instance per process, or a registry of its own per test.
    """

    def __init__(self, namespace: str, study: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.trials = Counter(
            "kubetune_runner_trials",
            "Trials this runner finished, by final state.",
            [*_LABELS, "state"],
            registry=registry,
        )
        self.trial_duration = Histogram(
            "kubetune_runner_trial_duration_seconds",
            "Wall time of each finished trial.",
            _LABELS,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.trial_overhead = Histogram(
            "kubetune_runner_trial_overhead_seconds",
            "Seconds of each trial that were neither training nor validation compute.",
            _LABELS,
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.oom_retries = Counter(
            "kubetune_runner_oom_retries",
            "Folds retried at half the micro-batch after running out of memory.",
            _LABELS,
            registry=registry,
        )
        self.gpu_utilization = Gauge(
            "kubetune_runner_gpu_utilization_ratio",
            "Mean GPU utilisation during the last trial (NVML; absent on CPU).",
            _LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.gpu_memory = Gauge(
            "kubetune_runner_gpu_memory_used_bytes",
            "Most GPU memory in use during the last trial (NVML; absent on CPU).",
            _LABELS,
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.labels = {"namespace": namespace, "study": study}
        # Series exist from the start, so a rate over the first trial is defined.
        for state in FINISHED_STATES.values():
            self.trials.labels(**self.labels, state=state)
        self.oom_retries.labels(**self.labels)

    def record(self, trial: FrozenTrial) -> None:
        """Count a trial this runner finished (other states are ignored)."""
        state = FINISHED_STATES.get(trial.state)
        if state is None:
            return
        self.trials.labels(**self.labels, state=state).inc()
        telemetry = trial_telemetry(trial)
        wall = telemetry.get("wall_seconds")
        if wall is None and trial.duration is not None:
            wall = trial.duration.total_seconds()
        if wall is not None:
            self.trial_duration.labels(**self.labels).observe(wall)
        overhead = telemetry.get("overhead_seconds")
        if overhead is not None:
            self.trial_overhead.labels(**self.labels).observe(overhead)
        retries = telemetry.get("oom_retries")
        if retries:
            self.oom_retries.labels(**self.labels).inc(retries)
        utilization = telemetry.get("gpu_utilization_mean")
        if utilization is not None:
            self.gpu_utilization.labels(**self.labels).set(utilization / 100.0)
        used = telemetry.get("gpu_memory_used_max")
        if used is not None:
            self.gpu_memory.labels(**self.labels).set(used)


def start_metrics_server(port: int, registry: CollectorRegistry = REGISTRY) -> Any | None:
    """Serve ``registry`` on ``0.0.0.0:port`` at ``/metrics`` in a daemon thread.

    Returns the server (``shutdown()`` stops it), or ``None`` when the port cannot be bound:
    that is logged as an error, and the process goes on without metrics rather than stop
    training or reconciling.
    """
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, registry=registry)
    except OSError as error:
        log.error("cannot serve metrics on port %d: %s", port, error)
        return None
    log.info("serving Prometheus metrics on :%d/metrics", port)
    return server
