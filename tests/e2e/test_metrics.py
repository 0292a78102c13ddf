"""Both metrics endpoints on the real-node tier, scraped as Prometheus would, while a study runs.

The chart's operator (a container, metrics on by default) and a runner container of the study
are scraped through the API server's pod proxy (``/api/v1/namespaces/NS/pods/POD:PORT/proxy/
metrics``): the runner's trial counters and the operator's per-study gauges must move as
trials finish, and end at the budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.helpers import wait_until
from tests.harness.node_fixtures import Operator, on_node
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

k8s: Any = kubernetes
#: The chart's defaults (metrics.port, metrics.runnerPort).
OPERATOR_PORT, RUNNER_PORT = 9090, 9100
STUDY_TIMEOUT = 600.0


@pytest.fixture
def core(node_studies: StudyClient) -> Iterator[Any]:
    client = node_studies.plane.api_client()
    try:
        yield k8s.client.CoreV1Api(client)
    finally:
        client.close()


def scrape(
    core: Any, namespace: str, pod: str, port: int
) -> dict[tuple[str, frozenset[Any]], float]:
    """The pod's /metrics through the API server, as ``{(sample, labels): value}``; empty when
    the endpoint does not answer (yet)."""
    try:
        text = core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{port}", namespace, "metrics"
        )
    except k8s.client.exceptions.ApiException:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_operator_and_runner_metrics_move_as_the_study_runs(
    node_studies: StudyClient,
    chart_operator: Operator,
    test_images: BuiltImages,
    core: Any,
) -> None:
    name, budget = "metrics", 6
    # One runner with trials of a few seconds: scraped between trials, it must count them.
    study = on_node(small_cpu_study(name, max_trials=budget, parallelism=1, epochs=40),
                    test_images.image)  # fmt: skip
    namespace = node_studies.namespace
    ours = {"namespace": namespace, "study": name}
    operator_pod = chart_operator.pod()["metadata"]["name"]
    node_studies.apply(study)

    runner = wait_until(
        lambda: [p for p in node_studies.pods(name) if p["status"].get("phase") == "Running"],
        300,
        "a running runner container",
        diagnose=node_studies.diagnose,
    )[0]
    annotations = runner["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(RUNNER_PORT)
    runner_name = runner["metadata"]["name"]

    def runner_finished() -> float:
        samples = scrape(core, namespace, runner_name, RUNNER_PORT)
        return sum(
            value(samples, "kubetune_runner_trials_total", **ours, state=state)
            for state in ("complete", "pruned")
        )

    first = wait_until(
        lambda: scrape(core, namespace, runner_name, RUNNER_PORT),
        120,
        "the runner's metrics endpoint",
        diagnose=node_studies.diagnose,
    )
    before = sum(
        value(first, "kubetune_runner_trials_total", **ours, state=state)
        for state in ("complete", "pruned")
    )
    assert before < budget, "the study finished before it could be watched"
    later = wait_until(
        lambda: (n := runner_finished()) > before and n,
        STUDY_TIMEOUT,
        "the runner's trial counter to move",
        diagnose=node_studies.diagnose,
    )
    samples = scrape(core, namespace, runner_name, RUNNER_PORT)
    finished = value(samples, "kubetune_runner_trial_duration_seconds_count", **ours)
    assert finished >= later
    assert value(samples, "kubetune_runner_trial_overhead_seconds_count", **ours) == finished

    def operator_counts() -> dict[tuple[str, frozenset[Any]], float]:
        return scrape(core, chart_operator.namespace, operator_pod, OPERATOR_PORT)

    seen = wait_until(
        lambda: value(operator_counts(), "kubetune_study_trials", **ours, state="complete"),
        STUDY_TIMEOUT,
        "the operator's complete-trials gauge of the study",
        diagnose=node_studies.diagnose,
    )
    node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")

    def operator_done() -> dict[tuple[str, frozenset[Any]], float] | None:
        samples = operator_counts()
        done = value(samples, "kubetune_study_condition", **ours, condition="Succeeded",
                     status="True")  # fmt: skip
        return samples if done == 1 else None

    final = wait_until(operator_done, 60, "the operator's Succeeded condition gauge")
    trials = {
        state: value(final, "kubetune_study_trials", **ours, state=state)
        for state in ("complete", "pruned")
    }
    assert sum(trials.values()) == budget, trials
    assert trials["complete"] >= seen
    assert value(final, "kubetune_study_trials_budget", **ours) == budget
    assert value(final, "kubetune_study_runners_desired", **ours) == 0
    assert value(final, "kubetune_study_trials_per_process", **ours) > 0
    assert value(final, "kubetune_reconcile_duration_seconds_count") > 0

    # kubectl get -o wide shows the same telemetry, from the status.
    columns = node_studies.columns(name, "-o", "wide")
    assert float(columns["OVERHEAD"]) > 0, columns
    assert float(columns["PACKING"]) == pytest.approx(
        value(final, "kubetune_study_trials_per_process", **ours), rel=0.01
    )
