"""The runner's Prometheus metrics move with the trials it finishes, and are served over HTTP."""

from __future__ import annotations

import datetime as dt
import socket
import urllib.request
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from prometheus_client import CollectorRegistry

from kubetune_api.contract import TELEMETRY_ATTR
from kubetune_study.metrics import RunnerMetrics, start_metrics_server

LABELS = {"namespace": "team-a", "study": "digits"}


def finished(state: TrialState, telemetry: dict[str, Any]) -> FrozenTrial:
    """A trial the engine finished, with its telemetry."""
    return optuna.trial.create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"x": 1.0},
        distributions={"x": FloatDistribution(0, 2)},
        user_attrs={TELEMETRY_ATTR: telemetry},
    )


def failed_after(seconds: float) -> FrozenTrial:
    """A trial whose task raised: no telemetry, only Optuna's start and end times."""
    trial = optuna.trial.create_trial(state=TrialState.FAIL)
    trial.datetime_start = dt.datetime(2026, 1, 1, 12, 0, 0)
    trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=seconds)
    return trial


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def test_a_new_runner_exports_zero_trials_of_each_state() -> None:
    registry = CollectorRegistry()
    RunnerMetrics("team-a", "digits", registry)
    for state in ("complete", "pruned", "failed"):
        assert sample(registry, "kubetune_runner_trials_total", state=state) == 0.0


def test_finished_trials_move_counts_durations_overheads_and_oom_retries() -> None:
    registry = CollectorRegistry()
    metrics = RunnerMetrics("team-a", "digits", registry)
    metrics.record(
        finished(
            TrialState.COMPLETE,
            {"wall_seconds": 12.0, "overhead_seconds": 0.02, "oom_retries": 0},
        )
    )
    metrics.record(
        finished(
            TrialState.PRUNED, {"wall_seconds": 3.0, "overhead_seconds": 0.5, "oom_retries": 2}
        )
    )
    metrics.record(failed_after(7.0))
    metrics.record(optuna.trial.create_trial(state=TrialState.WAITING))  # not finished: ignored

    assert sample(registry, "kubetune_runner_trials_total", state="complete") == 1.0
    assert sample(registry, "kubetune_runner_trials_total", state="pruned") == 1.0
    assert sample(registry, "kubetune_runner_trials_total", state="failed") == 1.0
    assert sample(registry, "kubetune_runner_trial_duration_seconds_count") == 3.0
    assert sample(registry, "kubetune_runner_trial_duration_seconds_sum") == 22.0
    assert sample(registry, "kubetune_runner_trial_duration_seconds_bucket", le="5.0") == 1.0
    assert sample(registry, "kubetune_runner_trial_overhead_seconds_count") == 2.0
    assert sample(registry, "kubetune_runner_trial_overhead_seconds_bucket", le="0.025") == 1.0
    assert sample(registry, "kubetune_runner_oom_retries_total") == 2.0
    # CPU trials record no NVML samples, so the GPU gauges have no series.
    assert sample(registry, "kubetune_runner_gpu_utilization_ratio") is None


def test_gpu_gauges_show_the_last_trial_as_nvml_saw_it() -> None:
    registry = CollectorRegistry()
    metrics = RunnerMetrics("team-a", "digits", registry)
    for utilization, used in ((80.0, 2**30), (40.0, 2**29)):
        metrics.record(
            finished(
                TrialState.COMPLETE,
                {"gpu_utilization_mean": utilization, "gpu_memory_used_max": used},
            )
        )
    assert sample(registry, "kubetune_runner_gpu_utilization_ratio") == pytest.approx(0.4)
    assert sample(registry, "kubetune_runner_gpu_memory_used_bytes") == 2**29


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_are_served_over_http_and_a_taken_port_is_not_fatal() -> None:
    registry = CollectorRegistry()
    RunnerMetrics("team-a", "digits", registry).record(
        finished(TrialState.COMPLETE, {"wall_seconds": 1.0})
    )
    port = _free_port()
    server = start_metrics_server(port, registry)
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert (
            'kubetune_runner_trials_total{namespace="team-a",state="complete",study="digits"} 1.0'
            in text
        )
        # A second server on the same port (two local runners) logs and goes on.
        assert start_metrics_server(port, CollectorRegistry()) is None
    finally:
        server.shutdown()
        server.server_close()
