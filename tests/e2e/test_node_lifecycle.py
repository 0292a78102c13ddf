"""A study's life on the real node: runners replaced, parallelism and budget edited live, the
operator restarted, suspend and resume, deletion.

The chart's operator runs as a container; estimate and runner pods are real containers of the
image built from this checkout (see ``test_real_node.py`` for the tier's set-up).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hpo_operator.sizing import format_bytes
from kubernetes.utils import parse_quantity

from kubetune_api.spec import SHARED_MEMORY_BASE
from tests.harness.helpers import wait_until
from tests.harness.node_fixtures import (
    Database,
    Operator,
    assert_exact_budget,
    on_node,
    trial_counts,
)
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

STUDY_TIMEOUT = 600.0


def _runner_names(studies: StudyClient, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in studies.pods(name)}


def _running(studies: StudyClient, name: str) -> list[dict[str, Any]]:
    return [p for p in studies.pods(name) if p["status"].get("phase") == "Running"]


def _finished(database: Database, studies: StudyClient, name: str) -> int:
    """Finished trials as the storage has them (not as the operator reports them)."""
    counts = trial_counts(database, studies, name)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def _reported(studies: StudyClient, name: str) -> int:
    """Finished trials as the operator reports them in the status."""
    trials = ((studies.study(name) or {}).get("status") or {}).get("trials") or {}
    return int(trials.get("complete", 0)) + int(trials.get("pruned", 0))


def _patch(studies: StudyClient, name: str, spec: dict[str, Any]) -> None:
    studies.kubectl("patch", "hpostudy", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def test_deleted_runner_pod_is_replaced_parallelism_edit_applies_and_budget_is_exact(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    studies, name, budget = node_studies, "replace", 6
    studies.apply(on_node(small_cpu_study(name, max_trials=budget, epochs=60), test_images.image))
    wait_until(
        lambda: _reported(studies, name) >= 1 and len(_running(studies, name)) == 2,
        STUDY_TIMEOUT,
        "a finished trial with two runners running",
        diagnose=studies.diagnose,
    )
    before = _runner_names(studies, name)
    studies.kubectl("delete", "pod", f"{name}-runner-0", "--wait=false")
    wait_until(
        lambda: (
            _runner_names(studies, name).get(f"{name}-runner-0")
            not in (None, before[f"{name}-runner-0"])
        ),
        120,
        "a new runner-0",
        diagnose=studies.diagnose,
    )
    # Lowering parallelism takes effect live: runner-1 goes, the study goes on.
    _patch(studies, name, {"resources": {"parallelism": 1}})
    wait_until(
        lambda: set(_runner_names(studies, name)) <= {f"{name}-runner-0"},
        120,
        "runner-1 removed",
        diagnose=studies.diagnose,
    )
    studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
    assert_exact_budget(node_database, studies, name, budget)


def test_operator_restart_mid_study_creates_no_duplicates(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    studies, name, budget = node_studies, "restart", 6
    deployment = f"{chart_operator.release}-kubetune-operator"
    studies.apply(on_node(small_cpu_study(name, max_trials=budget, epochs=60), test_images.image))
    wait_until(lambda: len(_running(studies, name)) == 2, 180, "two runners",
               diagnose=studies.diagnose)  # fmt: skip
    plane = studies.plane
    try:
        plane.kubectl("scale", "deployment", deployment, "-n", chart_operator.namespace,
                      "--replicas=0")  # fmt: skip
        wait_until(lambda: not chart_operator.pods(), 120, "the operator pod gone")
        before = _runner_names(studies, name)
        # The operator is down; the runners keep working: trials finish without it.
        down_at = _finished(node_database, studies, name)
        wait_until(
            lambda: _finished(node_database, studies, name) > down_at,
            STUDY_TIMEOUT,
            "a trial to finish while the operator is down",
            diagnose=studies.diagnose,
        )
    finally:
        plane.kubectl("scale", "deployment", deployment, "-n", chart_operator.namespace,
                      "--replicas=1")  # fmt: skip
    # The restarted operator reports a trial that finished after it came back.
    target = min(_finished(node_database, studies, name) + 1, budget)
    wait_until(
        lambda: _reported(studies, name) >= target,
        STUDY_TIMEOUT,
        "the restarted operator to report new trials",
        diagnose=studies.diagnose,
    )
    after = _runner_names(studies, name)
    assert set(after) <= {f"{name}-runner-0", f"{name}-runner-1"}
    surviving = {n: uid for n, uid in after.items() if n in before}
    assert surviving == {n: before[n] for n in surviving}, "running runners were replaced"
    studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
    assert_exact_budget(node_database, studies, name, budget)


def test_estimate_pod_sizes_runners_then_suspend_resume_and_live_budget_edit(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    studies, name = node_studies, "suspend"
    study = on_node(small_cpu_study(name, max_trials=4, epochs=60), test_images.image)
    # No stated memory: the operator runs the estimate pod and sizes CPU memory from it.
    del study["spec"]["resources"]["memory"]
    studies.apply(study)
    wait_until(
        lambda: _reported(studies, name) >= 1,
        STUDY_TIMEOUT,
        "a finished trial",
        diagnose=studies.diagnose,
    )
    sizing = studies.study(name)["status"]["sizing"]  # type: ignore[index]
    assert sizing["method"] in ("FakeTensor", "Analytic", "Probe"), sizing
    assert sizing["resource"] == "memory" and sizing["peakBytes"] > 0
    memory = {
        p["spec"]["containers"][0]["resources"]["limits"]["memory"] for p in studies.pods(name)
    }
    # The sized memory and the runner's /dev/shm (no data-loader workers: the base size).
    assert memory == {format_bytes(int(parse_quantity(sizing["quantity"])) + SHARED_MEMORY_BASE)}
    # Room for the runner process itself (torch alone is ~640 MiB), not just the tensors.
    assert parse_quantity(sizing["quantity"]) >= 2**30 + sizing["peakBytes"]
    assert studies.pods(name, "memory-estimate") == []

    _patch(studies, name, {"suspend": True})
    studies.wait_condition(name, "Suspended", "True", 60)
    wait_until(lambda: not studies.pods(name), 120, "runners drained", diagnose=studies.diagnose)
    # Nothing runs while suspended: the storage (the truth) does not move.
    frozen = trial_counts(node_database, studies, name)
    assert frozen.get("RUNNING", 0) == 0, frozen
    time.sleep(3)  # "nothing happens" has no condition to wait for
    assert trial_counts(node_database, studies, name) == frozen
    assert studies.condition(name, "Succeeded").get("status") != "True"

    # Resume with a larger budget: the same study continues to the new budget.
    _patch(studies, name, {"suspend": False, "budget": {"maxTrials": 6}})
    studies.wait_condition(name, "Suspended", "False", 60, reason="Resumed")
    wait_until(lambda: studies.pods(name), 120, "runners back", diagnose=studies.diagnose)
    studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
    assert studies.study(name)["status"]["trialsSummary"] == "6/6"  # type: ignore[index]
    assert_exact_budget(node_database, studies, name, 6)


def test_deletion_removes_runners_and_keeps_or_deletes_the_optuna_study(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    studies = node_studies
    kept = on_node(small_cpu_study("kept", max_trials=50), test_images.image)
    dropped = on_node(small_cpu_study("dropped", max_trials=50, parallelism=1), test_images.image)
    dropped["spec"]["storage"] = {"deletionPolicy": "Delete"}
    studies.apply(kept)
    studies.apply(dropped)
    wait_until(
        lambda: _running(studies, "kept") and _running(studies, "dropped"),
        180,
        "runners",
        diagnose=studies.diagnose,
    )
    study = studies.study("kept")
    assert study is not None and "kubetune.dev/finalizer" in study["metadata"]["finalizers"]
    studies.kubectl("delete", "hpostudy", "kept", "dropped", "--timeout=180s")
    assert studies.pods("kept") == [] and studies.pods("dropped") == []
    assert studies.study("kept") is None
    # Retain (the default): the Optuna study and its trials are still in the storage.
    assert trial_counts(node_database, studies, "kept") is not None
    with pytest.raises(KeyError):
        trial_counts(node_database, studies, "dropped")
