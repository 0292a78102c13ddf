"""Sharing a cluster: several trials per GPU, and runner pods admitted by the real Kueue.

Kueue v0.17 runs on loopback (``tests/harness/kueue.py``) with its pod integration, so its
webhook gates each runner pod and its scheduler admits them against a ClusterQueue's quota.

* On kwok's simulated H100 nodes (pods scheduled, never run): a small model's 15 trials at once
  take 3 runner pods of 5 runner processes per GPU, with the packing in its status; a GPU quota
  of 2 admits 2 of those pods, the study says it waits, and a second study in the same queue
  gets the quota when the first is gone.
* On the real node (marker ``node``): a CPU quota for one runner at a time, two studies in one
  queue, the second of a higher WorkloadPriorityClass. Kueue preempts the first study's
  running runner; its trial is released and retried, not failed; both studies finish exactly.
  The second study's 2 trials at once run as 2 runner processes of one runner pod
  (``trialsPerDevice: 2``) on its CPU and memory, as several trials share a GPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import optuna
import pytest
from optuna.trial import TrialState

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import started, unavailable, wait_until
from tests.harness.kueue import MANAGED_LABEL, Kueue, cluster_queue, queue_objects, queues
from tests.harness.node_fixtures import Database, Operator, assert_exact_budget, on_node
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.simulated_cluster import NodeGroup
from tests.harness.studies import small_cpu_study

pytestmark = pytest.mark.e2e

# The client's type hints want V1* models; plain dicts are accepted.
k8s: Any = kubernetes

ADMISSION_GATE = "kueue.x-k8s.io/admission"


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue's controller manager for the tests of this module."""
    runner = Kueue(control_plane, tmp_path_factory.mktemp("kueue"))
    missing = runner.missing()
    if missing:
        unavailable(
            f"Kueue is not built: {missing}; build it with `bash hack/control-plane/build.sh`",
            missing="Kueue",
        )
    with started(runner, "Kueue") as kueue:
        yield kueue


def manage(plane: ControlPlane, namespace: str) -> None:
    """Let Kueue manage the namespace's pods (its managedJobsNamespaceSelector)."""
    key, value = MANAGED_LABEL
    plane.kubectl("label", "namespace", namespace, f"{key}={value}", "--overwrite")


def gated(pod: dict[str, Any]) -> bool:
    gates = pod["spec"].get("schedulingGates") or []
    return any(g.get("name") == ADMISSION_GATE for g in gates)


def admitted(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods Kueue let through that are not on their way out."""
    return [
        p
        for p in pods
        if not gated(p)
        and not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") not in ("Succeeded", "Failed")
    ]


# --------------------------------------------------------------------------- simulated GPUs


@pytest.fixture
def studies(studies: StudyClient, kueue: Kueue) -> StudyClient:
    """conftest's ``studies``, in a namespace whose runner pods Kueue manages."""
    manage(kueue.plane, studies.namespace)
    return studies


def gpu_study(name: str, parallelism: int) -> dict[str, Any]:
    """A small model on whole GPUs, queued in the LocalQueue ``team``: 14 GiB at its peak, so
    5 share an H100 and ``parallelism`` trials at once take ``parallelism`` / 5 runner pods."""
    study = small_cpu_study(name, max_trials=20, parallelism=parallelism)
    study["spec"]["resources"] = {
        "accelerator": "GPU",
        "parallelism": parallelism,
        "peakMemory": "14Gi",
        "cpu": "1",
        "queueName": "team",
    }
    return study


def test_a_gpu_quota_admits_that_many_runner_pods_of_several_trials_each_and_is_shared(
    control_plane: ControlPlane,
    namespace: str,
    studies: StudyClient,
    simulated_cluster: Callable[..., list[str]],
    scheduling_operator: Callable[[], Any],
) -> None:
    nodes = simulated_cluster([NodeGroup(count=2, gpu="H100-80GB", gpus=2, name="h100")])
    quota = {"cpu": "100", "memory": "1Ti", "nvidia.com/gpu": "2"}
    objects = queue_objects(
        namespace, "team", cluster_queue(f"gpus-{namespace}", quota, f"gpus-{namespace}"),
        f"gpus-{namespace}",
    )  # fmt: skip
    seen: list[int] = []

    def count_admitted() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pods = studies.pods("first") + studies.pods("second")
        live = admitted(pods)
        seen.append(len(live))
        return live, [p for p in pods if gated(p)]

    with queues(control_plane, objects), scheduling_operator():
        studies.apply(gpu_study("first", parallelism=15))

        def two_admitted_one_waiting() -> list[dict[str, Any]] | None:
            live, waiting = count_admitted()
            bound = [p for p in live if p["spec"].get("nodeName") in nodes]
            return live if len(bound) == 2 and len(waiting) == 1 else None

        live = wait_until(
            two_admitted_one_waiting, 90, "2 runner pods admitted, 1 gated",
            diagnose=studies.diagnose,
        )  # fmt: skip
        # 14 GiB + 10 % + a CUDA context fits 5 times in an H100's 79.6 GiB: the 15 trials take
        # three runner pods, one GPU each, of 5 runner processes, asking for CPU for each.
        for pod in live:
            (container,) = pod["spec"]["containers"]
            assert container["command"][-2:] == ["--processes", "5"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert container["resources"]["requests"]["cpu"] == "5"
            assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
        # The operator's next pass sees what Kueue admitted.
        studies.wait_condition("first", "Ready", "False", 60, "WaitingForAdmission",
                               "1 wait for admission by Kueue (team)")  # fmt: skip
        status = (studies.study("first") or {})["status"]
        assert status["runners"]["waitingForAdmission"] == 1
        sizing = status["sizing"]
        assert (sizing["pods"], sizing["trialsPerDevice"], sizing["packing"]) == (3, 5, "88%")
        wide = studies.kubectl("get", "hpostudies", "-o", "wide").stdout
        assert "WaitingForAdmission" in wide and "88%" in wide, wide

        # A second study in the same queue waits for the quota the first holds ...
        studies.apply(gpu_study("second", parallelism=10))
        studies.wait_condition("second", "Ready", "False", 60, "WaitingForAdmission",
                               "0/2 runners ready; 2 wait for admission")  # fmt: skip
        time.sleep(3)  # Kueue had time to admit more, had the quota allowed it
        live, _ = count_admitted()
        assert {p["metadata"]["labels"]["kubetune.dev/study"] for p in live} == {"first"}

        # ... and gets it when the first is gone.
        studies.kubectl("delete", "hpostudy", "first", "--wait=false")

        def second_admitted() -> list[dict[str, Any]] | None:
            live, _ = count_admitted()
            mine = [p for p in live if p["metadata"]["labels"]["kubetune.dev/study"] == "second"]
            return mine if len(mine) == 2 else None

        wait_until(second_admitted, 120, "the second study's 2 runners admitted",
                   diagnose=studies.diagnose)  # fmt: skip
        studies.wait_condition("second", "Ready", "True", 60, "RunnersReady")
    # Never more runner pods admitted than the quota's 2 GPUs.
    assert max(seen) == 2, seen


# --------------------------------------------------------------------------- the real node


class AdmissionSampler:
    """Counts, every few tenths of a second, the namespace's runner pods Kueue has admitted
    and that are not on their way out; remembers the most seen at once and whether any pod
    waited at Kueue's gate or was stopped by Kueue."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.namespace = namespace
        self.most = 0
        self.waited = False
        #: The --processes of each study's admitted runner pods (absent: one process).
        self.processes: dict[str, set[str]] = {}
        self.stopped_by_kueue: set[str] = set()
        self._client = plane.api_client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        core = k8s.client.CoreV1Api(self._client)
        selector = "app.kubernetes.io/component=trial-runner"
        while not self._stop.is_set():
            try:
                listed = core.list_namespaced_pod(self.namespace, label_selector=selector)
            except Exception:  # the API server is busy: the next sample will do
                time.sleep(0.3)
                continue
            pods = [self._client.sanitize_for_serialization(p) for p in listed.items]
            self.most = max(self.most, len(admitted(pods)))
            self.waited = self.waited or any(gated(p) for p in pods)
            for pod in admitted(pods):
                command = pod["spec"]["containers"][0]["command"]
                count = command[-1] if "--processes" in command else "1"
                study = pod["metadata"]["labels"]["kubetune.dev/study"]
                self.processes.setdefault(study, set()).add(count)
            for pod in pods:
                for cond in pod["status"].get("conditions") or []:
                    if cond["type"] == "TerminationTarget" and cond["status"] == "True":
                        self.stopped_by_kueue.add(pod["metadata"]["uid"])
            time.sleep(0.3)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()


@pytest.mark.node
def test_a_cpu_quota_runs_one_runner_at_a_time_preempts_for_priority_and_loses_no_trial(
    kueue: Kueue,
    control_plane: ControlPlane,
    chart_operator: Operator,
    node_studies: StudyClient,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    namespace = node_studies.namespace
    manage(control_plane, namespace)
    # One runner pod (500m CPU) at a time; a higher priority preempts a lower one.
    quota = {"cpu": "500m", "memory": "4Gi"}
    cluster = cluster_queue(
        f"node-{namespace}", quota, f"node-{namespace}", preempt_lower_priority=True
    )
    high_priority = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": f"high-{namespace}"},
        "value": 1000,
        "description": "a study that may preempt others in its queue",
    }
    objects = [*queue_objects(namespace, "team", cluster, f"node-{namespace}"), high_priority]

    low = on_node(small_cpu_study("low", max_trials=4, parallelism=2), test_images.image)
    low["spec"]["resources"].update(cpu="500m", memory="1536Mi", queueName="team")
    # Trial 0 trains long enough to be preempted while it runs; the others are short.
    low["spec"]["training"]["epochSchedule"] = [
        {"fromTrial": 0, "epochs": 3000},
        {"fromTrial": 1, "epochs": 3},
    ]
    low["spec"]["training"].pop("epochs", None)
    high = on_node(small_cpu_study("high", max_trials=2, parallelism=1), test_images.image)
    # Two runner processes in one pod, each with 250m CPU and 1536Mi: the pod asks for 500m.
    high["spec"]["resources"].update(cpu="250m", memory="1536Mi", trialsPerDevice=2, parallelism=2)
    # Queued as Kueue's users queue their jobs: by the study's own labels.
    high["metadata"]["labels"] = {
        "kueue.x-k8s.io/queue-name": "team",
        "kueue.x-k8s.io/priority-class": f"high-{namespace}",
    }
    low_study = optuna_study(node_database, namespace, "low")
    names = {parameter["name"] for parameter in low["spec"]["searchSpace"]}

    with queues(control_plane, objects):
        sampler = AdmissionSampler(control_plane, namespace)
        try:
            node_studies.apply(low)
            # The first runner trains trial 0; the second waits at Kueue's gate.
            waiting = node_studies.wait_condition("low", "Ready", "False", 300,
                                                  "WaitingForAdmission")  # fmt: skip
            assert "wait for admission by Kueue (team)" in waiting["message"]
            wait_until(
                # Every parameter chosen (so training), which the retry repeats.
                lambda: any(
                    t.number == 0 and set(t.params) == names
                    for t in low_study().get_trials(states=(TrialState.RUNNING,))
                ),
                300,
                "trial 0 of the low-priority study to train",
                diagnose=node_studies.diagnose,
            )
            node_studies.apply(high)
            # Kueue stops the low-priority runner; SIGTERM releases its trial for a retry.
            wait_until(
                lambda: low_study().get_trials()[0].state == TrialState.FAIL,
                180,
                "the preempted trial to be released",
                diagnose=node_studies.diagnose,
            )
            node_studies.wait_condition("high", "Succeeded", "True", 600, "BudgetSpent")
            node_studies.wait_condition("low", "Succeeded", "True", 600, "BudgetSpent")
        finally:
            sampler.close()

    assert sampler.most == 1, "never more runner pods admitted than the quota holds"
    assert sampler.waited and sampler.stopped_by_kueue, "Kueue gated and preempted runners"
    assert_exact_budget(node_database, node_studies, "low", 4)
    assert_exact_budget(node_database, node_studies, "high", 2)
    # The second study's runner pods ran its trials in 2 processes each.
    assert sampler.processes == {"low": {"1"}, "high": {"2"}}, sampler.processes
    assert (node_studies.study("high") or {})["status"]["sizing"]["trialsPerDevice"] == 2
    trials = low_study().get_trials()
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[0].params
    status = (node_studies.study("low") or {})["status"]
    assert status["trials"]["failed"] == 0, "a preempted trial is retried, not failed"
    events = node_studies.kubectl("get", "events", "--field-selector", "reason=WaitingForAdmission")
    assert "low" in events.stdout


def optuna_study(database: Database, namespace: str, name: str) -> Callable[[], optuna.Study]:
    """The Optuna study of an HPOStudy, loaded afresh on each call (the operator creates it)."""
    return lambda: optuna.load_study(study_name=f"{namespace}.{name}", storage=database.url)
