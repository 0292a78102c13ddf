"""The operator's Prometheus metrics say what each study's status says, and forget deleted
studies (a registry of their own per test: nothing global is shared)."""

from __future__ import annotations

from typing import Any

import pytest
from hpo_operator.metrics import OperatorMetrics
from hpo_operator.reconcile import ObservedPod, decide
from hpo_operator.sizing import Peak, SizingDecision
from prometheus_client import CollectorRegistry

from kubetune_api.status import StudyStatus
from tests.unit.operator.data import NOW, laid_out, make_progress, make_spec

CPU = SizingDecision("CPU", "memory", "1Gi", 2**30, 2**30, Peak(2**30, "Memory"), "r")
STUDY = {"namespace": "team-a", "study": "digits"}


def _status(**progress: Any) -> StudyStatus:
    """The status decide() writes for a study with these trial counts (no pods yet)."""
    spec = make_spec()
    plan = decide(spec, StudyStatus(), 1, [], make_progress(**progress), laid_out(CPU, spec), NOW)
    return plan.status


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**STUDY, **labels})


def test_trial_counts_conditions_runners_and_best_follow_the_status() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe("team-a", "digits", _status(complete=1, running=2))
    assert _value(registry, "kubetune_study_trials", state="complete") == 1
    assert _value(registry, "kubetune_study_trials", state="running") == 2
    assert _value(registry, "kubetune_study_trials_budget") == 4
    assert _value(registry, "kubetune_study_runners_desired") == 2
    assert _value(registry, "kubetune_study_runners_ready") == 0
    assert _value(registry, "kubetune_study_condition", condition="Ready", status="False") == 1
    assert _value(registry, "kubetune_study_condition", condition="Ready", status="True") == 0
    assert _value(registry, "kubetune_study_best_value") is None  # no best trial yet

    # The study runs on: the same series move.
    metrics.observe("team-a", "digits", _status(complete=4, best=(0.93, 3), outcome="BudgetSpent"))
    assert _value(registry, "kubetune_study_trials", state="complete") == 4
    assert _value(registry, "kubetune_study_trials", state="running") == 0
    assert _value(registry, "kubetune_study_best_value") == pytest.approx(0.93)
    assert _value(registry, "kubetune_study_condition", condition="Succeeded", status="True") == 1
    assert _value(registry, "kubetune_study_runners_desired") == 0


def test_errors_are_counted_per_study_and_by_api_status() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.storage_error("team-a", "digits")
    metrics.reconcile_error("team-a", "digits", api_status=403)
    metrics.reconcile_error("team-a", "digits")
    assert _value(registry, "kubetune_storage_errors_total") == 1
    assert _value(registry, "kubetune_reconcile_errors_total") == 2
    assert _value(registry, "kubetune_api_errors_total", code="403") == 1
    with metrics.reconcile_duration.time():
        pass
    assert registry.get_sample_value("kubetune_reconcile_duration_seconds_count") == 1


def test_a_deleted_study_leaves_no_series_behind() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe("team-a", "digits", _status(complete=2, best=(0.5, 1)))
    metrics.observe("team-b", "other", _status(complete=1))
    metrics.reconcile_error("team-a", "digits", api_status=500)
    metrics.forget("team-a", "digits")
    names = {
        (sample.name, sample.labels.get("study"))
        for family in registry.collect()
        for sample in family.samples
        if "study" in sample.labels
    }
    assert names and all(study == "other" for _, study in names), names


def test_runners_waiting_for_kueue_and_trials_per_device_follow_the_status() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    shared = SizingDecision(
        "GPU", "nvidia.com/gpu", "1", 80 * 2**30, 15 * 2**30, Peak(14 * 2**30, "Spec"), "r", 5
    )
    gated = ObservedPod("digits-runner-1", "trial-runner", index=1, waiting_for_admission=True)
    running = ObservedPod("digits-runner-0", "trial-runner", index=0, phase="Running", ready=True)
    spec = make_spec()
    plan = decide(
        spec,
        StudyStatus(),
        1,
        [running, gated],
        make_progress(running=1),
        laid_out(shared, spec),
        NOW,
    )
    metrics.observe("team-a", "digits", plan.status)
    assert _value(registry, "kubetune_study_runners_waiting_for_admission") == 1
    assert _value(registry, "kubetune_study_trials_per_device") == 5
