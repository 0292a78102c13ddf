"""The real-node tier: kubetune as users run it, in real containers on a real kubelet.

The Helm chart installs the operator as a container of the image built from this checkout
(``hack/image/build.sh``), logged in with its in-cluster ServiceAccount, in a namespace that
enforces the ``restricted`` Pod Security Standard. Studies are applied with ``kubectl``; their
estimate and runner pods are containers that containerd runs with runc on the node of
:mod:`tests.e2e.real_node`, with real memory limits (cgroups), a read-only root filesystem, a
non-root uid, and SIGTERM then SIGKILL when a pod is deleted. They reach this machine's
PostgreSQL through the node's gateway address.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import psycopg2
import pytest
import yaml

from tests.e2e.conftest import BuiltImages
from tests.e2e.controlplane import REPO_ROOT, ControlPlane
from tests.e2e.operator_fixtures import (
    StudyClient,
    finished_trials,
    load_example,
    small_cpu_study,
    wait_until,
)
from tests.e2e.real_node import NODE_TAINT, RealNode

pytestmark = [pytest.mark.e2e, pytest.mark.node]

k8s: Any = kubernetes
CHART = REPO_ROOT / "charts" / "kubetune"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
RUNNER_UID = 65532
GRACE_PERIOD = 30
# The example as written: 24 trials of 3 folds in two runner containers on 2 shared cores.
EXAMPLE_TIMEOUT = 1200.0
STUDY_TIMEOUT = 600.0


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database of the test server: the URL here and the URL pods use."""

    name: str
    url: str
    pod_url: str


@pytest.fixture
def database(postgresql_proc: Any, real_node: RealNode) -> Iterator[Database]:
    """A fresh database, dropped (connections or not) after the test."""
    name = f"kt_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(
        host=postgresql_proc.host,
        port=postgresql_proc.port,
        user=postgresql_proc.user,
        password=postgresql_proc.password,
        dbname="postgres",
    )
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    credentials = f"{postgresql_proc.user}:{postgresql_proc.password}"
    pod_address = real_node.expose(int(postgresql_proc.port))
    try:
        yield Database(
            name,
            f"postgresql://{credentials}@{postgresql_proc.host}:{postgresql_proc.port}/{name}",
            f"postgresql://{credentials}@{pod_address}/{name}",
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _namespace(plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", name)
    plane.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    return name


@dataclass(frozen=True)
class Operator:
    """The chart's operator, running as a container on the real node."""

    namespace: str
    release: str
    plane: ControlPlane
    node: RealNode

    def pod(self) -> dict[str, Any]:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        pods = json.loads(
            self.plane.kubectl(
                "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json"
            ).stdout
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) <= 1, [p["metadata"]["name"] for p in live]
        return dict(live[0]) if live else {}

    def logs(self) -> str:
        return self.node.pod_log(self.namespace, self.pod().get("metadata", {}).get("name", "-"))


@pytest.fixture(scope="module")
def chart_operator(
    control_plane: ControlPlane,
    real_node: RealNode,
    test_images: BuiltImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """``helm install`` of the chart, operator and runners on the built image; uninstalled
    after the module."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    namespace = _namespace(control_plane, "kubetune-system")
    repository, tag = test_images.image.rsplit(":", 1)
    toleration = {"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "tolerations": [toleration],
        "operator": {
            "reconcileInterval": 2,
            "logLevel": "verbose",
        },
        "runner": {
            "image": {"repository": repository, "tag": tag},
            "pullPolicy": "Never",
            "terminationGracePeriodSeconds": GRACE_PERIOD,
            "tolerations": [f"{NODE_TAINT}:NoSchedule"],
            # Stale trials of killed runners are noticed within seconds, not half a minute.
            "extraEnv": {"KUBETUNE_HEARTBEAT_INTERVAL": "2", "KUBETUNE_WAIT_SECONDS": "1"},
            "estimate": {"cpu": "250m", "memory": "2Gi"},
        },
        "livenessProbe": {"initialDelaySeconds": 20, "periodSeconds": 10},
    }
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    release = f"kt-{uuid.uuid4().hex[:6]}"
    control_plane.helm(
        "install", release, str(CHART), "--namespace", namespace, "--values", str(values_file)
    )
    operator = Operator(namespace, release, control_plane, real_node)
    try:
        wait_until(
            lambda: _ready(operator.pod()),
            180,
            "the operator container to run and pass its liveness probe",
            diagnose=lambda: _describe(control_plane, namespace, real_node),
        )
        yield operator
    finally:
        control_plane.helm("uninstall", release, "--namespace", namespace, check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _ready(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses)


def _describe(plane: ControlPlane, namespace: str, node: RealNode) -> str:
    parts = [
        plane.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout,
        plane.kubectl(
            "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
        ).stdout[-4000:],
        "kubelet log:\n" + node.log_tail("kubelet", 30),
    ]
    return "\n".join(parts)


@pytest.fixture
def studies(
    control_plane: ControlPlane, chart_operator: Operator, database: Database
) -> Iterator[StudyClient]:
    """A restricted namespace for studies, with the chart's default storage Secret in it."""
    namespace = _namespace(control_plane, "e2e-node")
    control_plane.kubectl(
        *("create", "secret", "generic", "kubetune-postgres", "-n", namespace),
        f"--from-literal=url={database.pod_url}",
    )
    client = StudyClient(control_plane, namespace)
    try:
        yield client
    finally:
        client.kubectl("delete", "hpostudies", "--all", "--wait=true", "--timeout=120s",
                       check=False)  # fmt: skip
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _on_node(study: dict[str, Any], image: str) -> dict[str, Any]:
    study["spec"]["task"]["image"] = image
    return study


def _trials(database: Database, studies: StudyClient, name: str) -> dict[str, int]:
    return finished_trials(database.url, f"{studies.namespace}.{name}")


def _assert_exact_budget(database: Database, studies: StudyClient, name: str, budget: int) -> None:
    counts = _trials(database, studies, name)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == budget, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, counts


class PodWatch:
    """Every version of the study's pods the API server sends, from now on (a watch in a
    thread): terminal states survive the pod's deletion here."""

    def __init__(self, plane: ControlPlane, namespace: str, study: str) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._client = plane.api_client()
        self._stop = threading.Event()
        self._core = k8s.client.CoreV1Api(self._client)
        self._selector = f"kubetune.dev/study={study}"
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            watch = k8s.watch.Watch()
            with contextlib.suppress(Exception):
                for event in watch.stream(
                    self._core.list_namespaced_pod,
                    self._namespace,
                    label_selector=self._selector,
                    timeout_seconds=5,
                ):
                    pod = self._client.sanitize_for_serialization(event["object"])
                    self.events.append((time.monotonic(), event["type"], pod))
                    if self._stop.is_set():
                        break

    def terminated(self, pod_name: str) -> dict[str, Any] | None:
        """The last terminated state seen for the pod's container, if any."""
        found = None
        for _, _, pod in self.events:
            if pod["metadata"]["name"] != pod_name:
                continue
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                state = status.get("state") or {}
                if state.get("terminated"):
                    found = state["terminated"]
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()


# --------------------------------------------------------------------------- the tier


def test_node_runs_the_image_non_root_with_a_read_only_root(
    control_plane: ControlPlane, real_node: RealNode, test_images: BuiltImages
) -> None:
    """A bare pod of the image: uid 65532, `/` read-only, `/tmp` writable, exit code and
    termination message reported by the kubelet."""
    namespace = _namespace(control_plane, "e2e-node-pod")
    script = (
        "import os, sys\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "try:\n"
        "    open('/kubetune-probe', 'w')\n"
        "    print('root writable')\n"
        "except OSError as e:\n"
        "    print('root', e.strerror)\n"
        "open('/tmp/probe', 'w').write('ok')\n"
        "import torch, optuna, hpo_operator, trial_runner\n"
        "print('imports ok', torch.__version__)\n"
        "open('/dev/termination-log', 'w').write('done')\n"
        "sys.exit(3)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [{"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": test_images.image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", script],
                    "resources": {"limits": {"memory": "1Gi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    try:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))

        def finished() -> dict[str, Any] | None:
            got = json.loads(
                control_plane.kubectl("get", "pod", "probe", "-n", namespace, "-o", "json").stdout
            )
            return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

        done = wait_until(
            finished,
            180,
            "the probe pod to finish",
            diagnose=lambda: _describe(control_plane, namespace, real_node),
        )
        assert done["spec"]["nodeName"] == real_node.name
        (status,) = done["status"]["containerStatuses"]
        terminated = status["state"]["terminated"]
        assert terminated["exitCode"] == 3, terminated
        assert terminated["message"] == "done"
        log = real_node.pod_log(namespace, "probe")
        assert f"uid {RUNNER_UID} {RUNNER_UID}" in log, log
        assert "root Read-only file system" in log, log
        assert "imports ok" in log, log
        # The API server reaches the kubelet (through the egress proxy) for the same log.
        via_api = control_plane.kubectl("logs", "probe", "-n", namespace).stdout
        assert "imports ok" in via_api
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_operator_container_runs_with_its_service_account_in_a_restricted_namespace(
    control_plane: ControlPlane, chart_operator: Operator, test_images: BuiltImages
) -> None:
    pod = chart_operator.pod()
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == test_images.image
    assert spec["nodeName"] == chart_operator.node.name
    assert spec["serviceAccountName"].endswith("-kubetune")
    labels = json.loads(
        control_plane.kubectl("get", "namespace", chart_operator.namespace, "-o", "json").stdout
    )["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # It logged in in-cluster: kopf found the service account's token and the API server.
    # It logged in in-cluster (the projected token, the `kubernetes` Service through
    # kube-proxy) and watches studies; a refused request would be logged.
    log = wait_until(chart_operator.logs, 60, "the operator's log")
    assert "Traceback" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def test_cpu_example_finishes_in_real_containers(
    studies: StudyClient,
    chart_operator: Operator,
    database: Database,
    test_images: BuiltImages,
) -> None:
    """``kubectl apply -f examples/digits-cpu.yaml`` with the image set to the built one."""
    example = _on_node(load_example("digits-cpu.yaml"), test_images.image)
    name = example["metadata"]["name"]
    budget = example["spec"]["budget"]["maxTrials"]
    node = chart_operator.node
    watch = PodWatch(studies.plane, studies.namespace, name)
    try:
        studies.apply(example)
        running = wait_until(
            lambda: [p for p in studies.pods(name) if p["status"].get("phase") == "Running"],
            300,
            "a running runner container",
            diagnose=studies.diagnose,
        )
        assert all(p["spec"]["nodeName"] == node.name for p in running)
        _assert_confined(node)
        studies.wait_condition(name, "Succeeded", "True", EXAMPLE_TIMEOUT, reason="BudgetSpent")
        wait_until(lambda: not studies.pods(name), 120, "runner pods gone")
    finally:
        watch.close()
    # The estimate pod and the runners ran as containers, on the real node.
    seen = {pod["metadata"]["name"]: pod for _, _, pod in watch.events}
    assert f"{name}-estimate" not in seen or seen[f"{name}-estimate"]["spec"]["nodeName"]
    runners = [n for n in seen if n.startswith(f"{name}-runner-")]
    assert runners, seen.keys()
    for pod_name in runners:
        terminated = watch.terminated(pod_name)
        assert terminated is not None and terminated["exitCode"] == 0, (pod_name, terminated)
    status = (studies.study(name) or {})["status"]
    assert status["trialsSummary"] == f"{budget}/{budget}"
    best = studies.configmap(f"{name}-best")
    assert best is not None and best["trial"] == str(status["best"]["trial"])
    assert float(status["best"]["value"]) > 0.5
    _assert_exact_budget(database, studies, name, budget)


def _assert_confined(node: RealNode) -> None:
    """Every container process runs as a non-root uid, with `/` read-only and `/tmp` not."""
    pids = wait_until(node.container_processes, 60, "container processes")
    checked = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pause":
                continue  # the sandbox's, not ours
            status = Path(f"/proc/{pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
            assert uids is not None
            assert all(int(u) != 0 for u in uids.group(1).split()), (pid, uids.group(1))
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            options = {line.split()[4]: line.split()[5].split(",") for line in mounts}
            assert "ro" in options["/"], (pid, options["/"])
            if "/tmp" in options:
                assert "rw" in options["/tmp"], (pid, options["/tmp"])
            checked += 1
    assert checked, "no container process could be inspected"


def test_runners_given_too_little_memory_are_oom_killed_then_resized(
    studies: StudyClient, chart_operator: Operator, database: Database, test_images: BuiltImages
) -> None:
    """The runner's data set alone (about 280 MB) is more than the 256Mi the spec gives it: the
    kernel kills the runner in its cgroup, the operator sees OOMKilled, gives replacements more
    memory, and the study still finishes exactly."""
    name = "oom"
    study = small_cpu_study(name, max_trials=4, parallelism=1, epochs=1)
    _on_node(study, test_images.image)
    study["spec"]["task"]["config"] = {"repeat": 600}
    for parameter in study["spec"]["searchSpace"]:
        if parameter["name"] == "batch_size":
            parameter["choices"] = [512]
    study["spec"]["resources"].update({"accelerator": "CPU", "memory": "256Mi"})
    watch = PodWatch(studies.plane, studies.namespace, name)
    try:
        studies.apply(study)
        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    finally:
        watch.close()
    names = {pod["metadata"]["name"] for _, _, pod in watch.events}
    oom_killed = [n for n in names if (watch.terminated(n) or {}).get("reason") == "OOMKilled"]
    assert oom_killed, "no runner was OOMKilled"
    limits = {
        pod["metadata"]["uid"]: pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
        for _, _, pod in watch.events
    }
    assert "256Mi" in limits.values()
    assert len(set(limits.values())) > 1, limits  # replacements got more
    events = studies.kubectl("get", "events", "--field-selector", "reason=OOMKilled").stdout
    assert "ran out of memory" in events
    _assert_exact_budget(database, studies, name, 4)


def test_deleted_runner_gets_sigterm_releases_its_trial_and_the_budget_stays_exact(
    studies: StudyClient, chart_operator: Operator, database: Database, test_images: BuiltImages
) -> None:
    name = "sigterm"
    # Trials long enough (tens of seconds) that one is mid-flight when its pod is deleted.
    study = _on_node(
        small_cpu_study(name, max_trials=4, parallelism=2, epochs=60), test_images.image
    )
    study["spec"]["task"]["config"] = {"repeat": 4}
    watch = PodWatch(studies.plane, studies.namespace, name)
    try:
        studies.apply(study)
        victim = f"{name}-runner-0"

        def running_trial() -> bool:
            counts = _trials(database, studies, name)
            return counts.get("RUNNING", 0) >= 2

        wait_until(running_trial, STUDY_TIMEOUT, "both runners inside a trial",
                   diagnose=studies.diagnose)  # fmt: skip
        deleted_at = time.monotonic()
        studies.kubectl("delete", "pod", victim, "--wait=false")
        terminated = wait_until(
            lambda: watch.terminated(victim), GRACE_PERIOD + 60, "the deleted runner to stop"
        )
        stopped_after = time.monotonic() - deleted_at
        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    finally:
        watch.close()
    # SIGTERM, not SIGKILL: the runner released its trial and exited 0 within the grace period.
    assert terminated["exitCode"] == 0, terminated
    assert stopped_after < GRACE_PERIOD, stopped_after
    storage_study = _optuna_study(database, studies, name)
    retried = [t for t in storage_study.trials if t.system_attrs.get("retry_history")]
    assert retried, "the interrupted trial was not queued again"
    _assert_exact_budget(database, studies, name, 4)


def _optuna_study(database: Database, studies: StudyClient, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=f"{studies.namespace}.{name}", storage=database.url)
