"""Helpers for tests on the real node: databases pods can reach, the chart's operator running as
a container, restricted namespaces, and a watch that keeps every version of a study's pods.

The fixtures built on them (``node_database``, ``chart_operator``, ``node_studies``) are in
``tests/e2e/conftest.py``; tests that need an operator installed differently call
:func:`install_chart_operator` themselves.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes
import psycopg2
import yaml

from kubetune_api.contract import COMPONENT_LABEL, INSTANCE_LABEL, STUDY_LABEL
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import REPO_ROOT, wait_until
from tests.harness.operator_fixtures import StudyClient, finished_trials
from tests.harness.real_node import NODE_TAINT, RealNode

__all__ = [
    "CHART",
    "NODE_TOLERATION",
    "RESTRICTED",
    "Database",
    "LogKeeper",
    "Operator",
    "PodWatch",
    "assert_exact_budget",
    "create_database",
    "describe_namespace",
    "install_chart_operator",
    "on_node",
    "restricted_namespace",
    "study_namespace",
    "trial_counts",
]

k8s: Any = kubernetes
CHART = REPO_ROOT / "charts" / "kubetune"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
NODE_TOLERATION = {"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
#: Runner pods' grace period under the chart installs of the tests.
GRACE_PERIOD = 30


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database of the test server: the URL here and the URL pods use."""

    name: str
    url: str
    pod_url: str


@contextlib.contextmanager
def create_database(server: Any, node: RealNode, password: str | None = None) -> Iterator[Database]:
    """A fresh database on the pytest-postgresql ``server``; dropped, connections or not.

    With ``password``, the URLs log in as a new role of the database's name with that password
    (the server's own password is the word ``kubetune``, which a search for leaks would find in
    every name): the role is dropped with the database."""
    name = f"kt_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
    )
    admin.autocommit = True
    with admin.cursor() as cur:
        if password is None:
            cur.execute(f"CREATE DATABASE {name}")
        else:
            cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE DATABASE {name} OWNER {name}")
    user = server.user if password is None else name
    credentials = f"{user}:{quote(password or server.password, safe='')}"
    pod_address = node.expose(int(server.port))
    try:
        yield Database(
            name,
            f"postgresql://{credentials}@{server.host}:{server.port}/{name}",
            f"postgresql://{credentials}@{pod_address}/{name}",
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if password is not None:
                cur.execute(f"DROP ROLE IF EXISTS {name}")
        admin.close()


def restricted_namespace(plane: ControlPlane, prefix: str) -> str:
    """A new namespace that enforces the restricted Pod Security Standard."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", name)
    plane.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    return name


@contextlib.contextmanager
def study_namespace(
    control_plane: ControlPlane, database: Database, prefix: str
) -> Iterator[StudyClient]:
    """A restricted namespace for studies, with the chart's default storage Secret in it."""
    namespace = restricted_namespace(control_plane, prefix)
    control_plane.kubectl(
        *("create", "secret", "generic", "kubetune-postgres", "-n", namespace),
        f"--from-literal=url={database.pod_url}",
    )
    client = StudyClient(control_plane, namespace)
    try:
        yield client
    finally:
        # The operator removes its finalizers while it still runs.
        client.kubectl(
            "delete", "hpostudies", "--all", "--wait=true", "--timeout=120s", check=False
        )
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def describe_namespace(plane: ControlPlane, namespace: str, node: RealNode) -> str:
    """Pods, events and the kubelet's last lines, for a failure message."""
    parts = [
        plane.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout,
        plane.kubectl(
            "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False
        ).stdout[-4000:],
        "kubelet log:\n" + node.log_tail("kubelet", 30),
    ]
    return "\n".join(parts)


@dataclass(frozen=True)
class Operator:
    """The chart's operator, running as a container on the real node."""

    namespace: str
    release: str
    plane: ControlPlane
    node: RealNode

    def pods(self) -> list[dict[str, Any]]:
        """The operator pods not being deleted."""
        selector = f"{INSTANCE_LABEL}={self.release},{COMPONENT_LABEL}=operator"
        pods = json.loads(
            self.plane.kubectl(
                "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json"
            ).stdout
        )["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict[str, Any]:
        """The one operator pod (``{}`` while there is none)."""
        live = self.pods()
        assert len(live) <= 1, [p["metadata"]["name"] for p in live]
        return dict(live[0]) if live else {}

    def logs(self) -> str:
        """Everything every operator pod of the release wrote, as the kubelet stored it."""
        return self.node.pod_log(self.namespace, f"{self.release}-kubetune-operator-*")


def _ready(pods: list[dict[str, Any]]) -> bool:
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if not statuses or not all(s.get("ready") for s in statuses):
            return False
    return bool(pods)


@contextlib.contextmanager
def install_chart_operator(
    plane: ControlPlane,
    node: RealNode,
    image: str,
    work_dir: Path,
    values: Mapping[str, Any] | None = None,
) -> Iterator[Operator]:
    """``helm install`` of the chart into a new restricted namespace, operator and runners on
    ``image``, the operator's pods on the real node; ``values`` are merged over the defaults
    (as helm merges values files: maps key by key, anything else replaces). Uninstalled on
    exit."""
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    namespace = restricted_namespace(plane, "kubetune-system")
    repository, tag = image.rsplit(":", 1)
    defaults: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "tolerations": [NODE_TOLERATION],
        "operator": {"reconcileInterval": 2, "logLevel": "verbose"},
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
    values_file = work_dir / f"values-{uuid.uuid4().hex[:6]}.yaml"
    values_file.write_text(yaml.safe_dump(_merged(defaults, values or {})))
    release = f"kt-{uuid.uuid4().hex[:6]}"
    plane.helm(
        "install", release, str(CHART), "--namespace", namespace, "--values", str(values_file)
    )
    operator = Operator(namespace, release, plane, node)
    try:
        wait_until(
            lambda: _ready(operator.pods()),
            180,
            "the operator container to run and pass its liveness probe",
            diagnose=lambda: describe_namespace(plane, namespace, node),
        )
        yield operator
    finally:
        plane.helm("uninstall", release, "--namespace", namespace, check=False)
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def on_node(study: dict[str, Any], image: str) -> dict[str, Any]:
    """``study`` with its runner image set to ``image`` (the test image on the node)."""
    study["spec"]["task"]["image"] = image
    return study


def trial_counts(database: Database, studies: StudyClient, name: str) -> dict[str, int]:
    return finished_trials(database.url, f"{studies.namespace}.{name}")


def assert_exact_budget(database: Database, studies: StudyClient, name: str, budget: int) -> None:
    counts = trial_counts(database, studies, name)
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
        self._selector = f"{STUDY_LABEL}={study}"
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A list gives the resourceVersion to watch from; every later watch continues from the
        # last version seen, so no event falls between two watch calls.
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self._core.list_namespaced_pod(
                        self._namespace, label_selector=self._selector
                    )
                    for item in listing.items:
                        self._record("LISTED", item)
                    version = listing.metadata.resource_version
                for event in k8s.watch.Watch().stream(
                    self._core.list_namespaced_pod,
                    self._namespace,
                    label_selector=self._selector,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                ):
                    version = event["object"].metadata.resource_version
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except k8s.client.exceptions.ApiException as error:
                if error.status == 410:  # too old: list again
                    version = None
                else:
                    time.sleep(0.5)
            except Exception:
                time.sleep(0.5)

    def _record(self, kind: str, pod: Any) -> None:
        self.events.append((time.monotonic(), kind, self._client.sanitize_for_serialization(pod)))

    def names(self) -> set[str]:
        return {pod["metadata"]["name"] for _, _, pod in self.events}

    def terminations(self) -> dict[str, dict[str, Any]]:
        """The last terminated state seen for each pod, by uid: a replacement pod often has its
        predecessor's name, so a name alone would mix up their states."""
        found: dict[str, dict[str, Any]] = {}
        for _, _, pod in self.events:
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                state = status.get("state") or {}
                if state.get("terminated"):
                    found[pod["metadata"]["uid"]] = state["terminated"]
        return found

    def terminated(self, pod_name: str) -> dict[str, Any] | None:
        """The terminated state of the first pod seen with this name, if it has stopped."""
        uids = [pod["metadata"]["uid"] for _, _, pod in self.events
                if pod["metadata"]["name"] == pod_name]  # fmt: skip
        return self.terminations().get(uids[0]) if uids else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()


class LogKeeper:
    """Every container log the node writes, read every half second and kept: the kubelet
    deletes a pod's logs with the pod, and runner pods go when their study ends."""

    def __init__(self, node: RealNode) -> None:
        self._logs: dict[Path, str] = {}
        self._root = node.work_dir / "pod-logs"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._read()

    def _read(self) -> None:
        for log in self._root.rglob("*.log"):
            with contextlib.suppress(OSError):
                self._logs[log] = log.read_text(errors="replace")

    def close(self) -> dict[str, str]:
        """Stop; every log seen, by its path under the node's pod-logs directory."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._read()
        return {str(path.relative_to(self._root)): text for path, text in self._logs.items()}
