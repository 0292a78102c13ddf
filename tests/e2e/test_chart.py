"""The Helm chart against the real control plane: lint, render, install, admission and RBAC.

The chart is linted and rendered by the ``helm`` built with the control plane, installed into
fresh namespaces, and its operator pod must be admitted by a namespace that enforces the
``restricted`` Pod Security Standard. RBAC is checked with ``kubectl auth can-i`` as the chart's
service account, both for what the operator does (see ``operator/handlers.py``) and for what it
must not be able to do; finally the real operator runs with a token of that ServiceAccount.
The chart's pods are not run (kwok at most simulates them): being created is what admission
decides.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hpo_operator.config import OperatorConfig
from hpo_operator.pods import runner_pod
from hpo_operator.sizing import Peak, SizingDecision

from kubetune_api.spec import study_from_mapping
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import REPO_ROOT, wait_until
from tests.harness.operator_fixtures import CRD_NAME, StudyClient, run_operator
from tests.harness.simulated_cluster import NodeGroup
from tests.harness.studies import small_cpu_study

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "kubetune"
ALL_FEATURES = ("--set", "postgresql.enabled=true,dashboard.enabled=true")

# (verb, resource, subresource) the operator needs in a watched namespace.
NAMESPACED_NEEDS = [
    ("get", CRD_NAME, ""),
    ("list", CRD_NAME, ""),
    ("watch", CRD_NAME, ""),
    ("patch", CRD_NAME, ""),
    ("patch", CRD_NAME, "status"),
    ("update", CRD_NAME, "finalizers"),
    ("create", "pods", ""),
    ("delete", "pods", ""),
    ("list", "pods", ""),
    ("create", "configmaps", ""),
    ("update", "configmaps", ""),
    ("get", "secrets", ""),
    ("create", "events", ""),
    ("list", "events", ""),
    ("watch", "events", ""),
]
# Cluster-scoped reads: node capacities for sizing, CRDs for kopf's scanning.
CLUSTER_NEEDS = [
    ("list", "nodes", ""),
    ("watch", "nodes", ""),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
]
# Never needed; a chart granting any of these is too generous.
NAMESPACED_FORBIDDEN = [
    ("delete", "secrets", ""),
    ("list", "secrets", ""),
    ("create", "secrets", ""),  # only with defaultStorage.lookup=ReleaseNamespace
    ("delete", CRD_NAME, ""),
    ("create", "pods", "exec"),
    ("create", "serviceaccounts", "token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
]
CLUSTER_FORBIDDEN = [
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("patch", "nodes", ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
]


# --------------------------------------------------------------------------- helpers


def _server_version(plane: ControlPlane) -> str:
    out = plane.kubectl("version", "-o", "json").stdout
    return str(json.loads(out)["serverVersion"]["gitVersion"])


def _render(plane: ControlPlane, namespace: str, *values: str) -> list[dict[str, Any]]:
    # The control plane's helm is built without a default Kubernetes version; give the real one.
    out = plane.helm(
        "template",
        "t",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        _server_version(plane),
        *values,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _operator_container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        d
        for d in _by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _can(
    plane: ControlPlane, user: str, verb: str, resource: str, sub: str, namespace: str | None
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    result = plane.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stderr}"
    return answer == "yes"


def _assert_rbac(
    plane: ControlPlane,
    user: str,
    allowed: Sequence[tuple[str, str, str]],
    denied: Sequence[tuple[str, str, str]],
    namespace: str | None,
) -> None:
    wrong = [
        f"{verb} {resource}{'/' + sub if sub else ''}: expected {'allowed' if want else 'denied'}"
        for want, checks in ((True, allowed), (False, denied))
        for verb, resource, sub in checks
        if _can(plane, user, verb, resource, sub, namespace) != want
    ]
    assert not wrong, f"RBAC of {user} in {namespace or 'the cluster'}:\n" + "\n".join(wrong)


@pytest.fixture
def make_namespace(control_plane: ControlPlane) -> Iterator[Callable[..., str]]:
    """``make_namespace(labels=None) -> name``: fresh namespaces, deleted after the test."""
    made: list[str] = []

    def make(labels: dict[str, str] | None = None) -> str:
        name = f"e2e-chart-{uuid.uuid4().hex[:6]}"
        control_plane.kubectl("create", "namespace", name)
        made.append(name)
        if labels:
            pairs = (f"{k}={v}" for k, v in labels.items())
            control_plane.kubectl("label", "namespace", name, *pairs, "--overwrite")
        return name

    yield make
    for name in made:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def install(
    control_plane: ControlPlane, make_namespace: Callable[..., str]
) -> Iterator[Callable[..., str]]:
    """``install(namespace, *helm_args) -> release``; uninstalled before the namespaces go.

    Cluster-scoped objects (ClusterRoles, bindings) would outlive the namespaces otherwise.
    """
    installed: list[tuple[str, str]] = []

    def run(namespace: str, *values: str) -> str:
        name = f"kt-{uuid.uuid4().hex[:6]}"
        control_plane.helm("install", name, str(CHART), "--namespace", namespace, *values)
        installed.append((name, namespace))
        return name

    yield run
    for name, namespace in installed:
        control_plane.helm("uninstall", name, "--namespace", namespace, check=False)


# --------------------------------------------------------------------------- lint and render


def test_chart_lints_strictly(control_plane: ControlPlane) -> None:
    version = _server_version(control_plane)
    for values in ((), ALL_FEATURES, ("--set", "watchNamespaces={team-a,team-b}")):
        result = control_plane.helm(
            "lint", "--strict", "--kube-version", version, str(CHART), *values
        )
        assert "0 chart(s) failed" in result.stdout, result.stdout


def test_default_render_is_cluster_wide_and_restricted(control_plane: ControlPlane) -> None:
    docs = _render(control_plane, "kubetune-system")
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    # Leader election is on: one Lease, named, in the release namespace.
    (role,) = _by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "kubetune-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["t-kubetune-operator"],
            "verbs": ["get", "update"],
        },
    ]
    container = _operator_container(docs)
    assert container["command"] == ["python", "-m", "hpo_operator"]
    assert "--all-namespaces" in container["args"] and "--standalone" in container["args"]
    env = _env(container)
    assert env["KUBETUNE_LEADER_ELECTION_LEASE"] == "kubetune-system/t-kubetune-operator"
    assert env["KUBETUNE_DEFAULT_STORAGE_SECRET"] == "kubetune-postgres/url"
    assert env["KUBETUNE_RUNNER_IMAGE"].endswith(":0.1.0-cpu")
    assert "KUBETUNE_STORAGE_URL" not in env
    # Metrics on by default: the operator's port behind a Service, and the runners' port.
    assert env["KUBETUNE_METRICS_PORT"] == "9090"
    assert env["KUBETUNE_RUNNER_METRICS_PORT"] == "9100"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    (service,) = _by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_render_with_postgresql_and_dashboard(control_plane: ControlPlane) -> None:
    docs = _render(control_plane, "kubetune-system", *ALL_FEATURES)
    (secret,) = _by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == "kubetune-postgres"
    assert set(secret["data"]) == {"username", "database", "password", "url"}
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert url.startswith("postgresql://kubetune:")
    assert "@t-kubetune-postgresql.kubetune-system.svc:5432/kubetune" in url
    (statefulset,) = _by_kind(docs, "StatefulSet")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    dashboards = [
        d
        for d in _by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"
    ]
    (dashboard,) = dashboards
    (container,) = dashboard["spec"]["template"]["spec"]["containers"]
    assert _env(container)["OPTUNA_STORAGE"] == {
        "secretKeyRef": {"name": "kubetune-postgres", "key": "url"}
    }
    services = {s["metadata"]["name"] for s in _by_kind(docs, "Service")}
    assert services == {
        "t-kubetune-postgresql",
        "t-kubetune-dashboard",
        "t-kubetune-operator-metrics",
    }


MONITORING = (
    "--set",
    "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,"
    "metrics.grafanaDashboard.enabled=true",
)


def test_render_with_monitoring_selects_what_the_operator_creates(
    control_plane: ControlPlane,
) -> None:
    """The ServiceMonitor selects the metrics Service; the PodMonitor selects the runner pods
    the operator creates (their labels and port, from the operator's own manifest code)."""
    docs = _render(control_plane, "kubetune-system", *MONITORING)
    (service,) = _by_kind(docs, "Service")
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]

    env = _env(_operator_container(docs))
    config = OperatorConfig.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    sizing = SizingDecision("CPU", "memory", "1Gi", 2**30, 2**30, Peak(2**30, "Memory"), "r")
    owner = {"metadata": {"name": "s", "namespace": "team-a", "uid": "u"}}
    spec = study_from_mapping(small_cpu_study("s")).spec
    pod = runner_pod(owner, spec, 0, sizing, ("pg", "url"), config)
    (pod_monitor,) = _by_kind(docs, "PodMonitor")
    assert (
        pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}

    (configmap,) = _by_kind(docs, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kubetune.json"])
    assert dashboard["uid"] == "kubetune" and dashboard["panels"]
    lint = control_plane.helm("lint", "--strict", str(CHART), *MONITORING)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout


def test_namespaced_render_uses_roles(control_plane: ControlPlane) -> None:
    docs = _render(control_plane, "kubetune-system", "--set", "watchNamespaces={team-a,team-b}")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in _by_kind(docs, "Role")}
    leader_election = ("kubetune-system", "t-kubetune-leader-election")
    assert roles == {("team-a", "t-kubetune"), ("team-b", "t-kubetune"), leader_election}
    assert len(_by_kind(docs, "RoleBinding")) == 3
    # Only the cluster-scoped reads stay a ClusterRole.
    (cluster_role,) = _by_kind(docs, "ClusterRole")
    resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert resources == {"nodes", "customresourcedefinitions", "namespaces"}
    args = _operator_container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_release_namespace_storage_passes_the_url_and_grants_secret_writes(
    control_plane: ControlPlane,
) -> None:
    docs = _render(
        control_plane, "kubetune-system", "--set", "defaultStorage.lookup=ReleaseNamespace"
    )
    env = _env(_operator_container(docs))
    assert "KUBETUNE_DEFAULT_STORAGE_SECRET" not in env
    assert env["KUBETUNE_STORAGE_URL"]["secretKeyRef"]["name"] == "kubetune-postgres"
    (role,) = [
        r for r in _by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith("read")
    ]
    (secrets,) = [rule for rule in role["rules"] if rule["resources"] == ["secrets"]]
    assert secrets["verbs"] == ["get", "create", "update"]


def test_bad_values_are_refused_with_the_key(control_plane: ControlPlane) -> None:
    result = control_plane.helm(
        "template",
        "t",
        str(CHART),
        "--kube-version",
        _server_version(control_plane),
        "--set",
        "defaultStorage.lookup=Elsewhere",
        check=False,
    )
    assert result.returncode != 0
    assert "defaultStorage.lookup" in result.stderr
    # Several replicas without leader election would all act.
    both = ("--set", "operator.replicas=2,operator.leaderElection.enabled=false")
    refused = control_plane.helm(
        "template", "t", str(CHART), "--kube-version", _server_version(control_plane), *both,
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "operator.replicas" in refused.stderr and "leaderElection" in refused.stderr


# --------------------------------------------------------------------------- install


def test_install_in_restricted_namespace(
    control_plane: ControlPlane,
    make_namespace: Callable[..., str],
    install: Callable[..., str],
) -> None:
    namespace = make_namespace(
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    )
    # The namespace really enforces: a root pod is refused.
    refused = control_plane.kubectl(
        *("run", "root", "--image=busybox", "--restart=Never", "--dry-run=server"),
        *("--namespace", namespace),
        check=False,
    )
    assert refused.returncode != 0 and "restricted" in refused.stderr, refused.stderr

    name = install(namespace, *ALL_FEATURES)
    fullname = f"{name}-kubetune"

    crd = json.loads(control_plane.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    control_plane.kubectl("get", "hpostudies", "--namespace", namespace)  # served

    control_plane.kubectl("get", "serviceaccount", fullname, "--namespace", namespace)
    control_plane.kubectl("get", "deployment", f"{fullname}-operator", "--namespace", namespace)
    control_plane.kubectl("get", "clusterrole", f"{fullname}-{namespace}")
    control_plane.kubectl("get", "clusterrolebinding", f"{fullname}-{namespace}-cluster-read")

    # A pod exists only if admission let it in; a refusal shows as a FailedCreate event.
    for component in ("operator", "postgresql", "dashboard"):
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}"

        def created(selector: str = selector) -> bool:
            pods = control_plane.kubectl(
                "get", "pods", "--namespace", namespace, "-o", "name", "-l", selector
            )
            return bool(pods.stdout.strip())

        def failed_creates() -> str:
            return control_plane.kubectl(
                *("get", "events", "--namespace", namespace),
                *("--field-selector", "reason=FailedCreate"),
            ).stdout

        wait_until(
            created,
            60,
            f"the {component} pod to be admitted in a restricted namespace",
            diagnose=failed_creates,
        )

    user = f"system:serviceaccount:{namespace}:{fullname}"
    _assert_rbac(control_plane, user, NAMESPACED_NEEDS, NAMESPACED_FORBIDDEN, namespace)
    _assert_rbac(control_plane, user, CLUSTER_NEEDS, CLUSTER_FORBIDDEN, None)
    # Watching all namespaces: the same rights elsewhere.
    status = [("patch", CRD_NAME, "status")]
    _assert_rbac(control_plane, user, status, [], "default")
    # Leader election: its own Lease in the release namespace, and nothing else.
    lease = f"leases.coordination.k8s.io/{fullname}-operator"
    other_lease = "leases.coordination.k8s.io/kube-scheduler"
    _assert_rbac(
        control_plane,
        user,
        [("get", lease, ""), ("update", lease, ""), ("create", "leases.coordination.k8s.io", "")],
        [
            ("update", other_lease, ""),
            ("delete", lease, ""),
            ("list", "leases.coordination.k8s.io", ""),
        ],
        namespace,
    )
    _assert_rbac(control_plane, user, [], [("create", "leases.coordination.k8s.io", "")], "default")


def test_namespaced_install_grants_only_the_watched_namespace(
    control_plane: ControlPlane,
    make_namespace: Callable[..., str],
    install: Callable[..., str],
) -> None:
    home, watched, other = make_namespace(), make_namespace(), make_namespace()
    name = install(home, "--set", f"watchNamespaces={{{watched}}}")
    user = f"system:serviceaccount:{home}:{name}-kubetune"
    _assert_rbac(control_plane, user, NAMESPACED_NEEDS, NAMESPACED_FORBIDDEN, watched)
    # Nodes stay readable (sizing); cluster-wide writes do not appear.
    _assert_rbac(control_plane, user, CLUSTER_NEEDS, CLUSTER_FORBIDDEN, None)
    elsewhere = [
        ("create", "pods", ""),
        ("patch", CRD_NAME, "status"),
        ("get", "secrets", ""),
    ]
    _assert_rbac(control_plane, user, [], elsewhere, other)


def _token_kubeconfig(plane: ControlPlane, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster, with a bearer token as the only credential."""
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    (cluster,) = admin["clusters"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_works_with_the_charts_rbac_and_settings(
    control_plane: ControlPlane,
    make_namespace: Callable[..., str],
    install: Callable[..., str],
    simulated_cluster: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The real operator, logged in as the chart's ServiceAccount with the installed
    Deployment's environment, handles a study: finalizer, status, ConfigMap, pods, deletion."""
    simulated_cluster([NodeGroup(count=1, cpu="8", memory="32Gi")])  # kwok runs the pods
    namespace = make_namespace()
    name = install(namespace, "--set", f"watchNamespaces={{{namespace}}}")
    fullname = f"{name}-kubetune"
    token = control_plane.kubectl("create", "token", fullname, "--namespace", namespace).stdout
    kubeconfig = _token_kubeconfig(control_plane, token.strip(), tmp_path / "sa.kubeconfig")

    deployment = json.loads(
        control_plane.kubectl(
            "get", "deployment", f"{fullname}-operator", "--namespace", namespace, "-o", "json"
        ).stdout
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KUBETUNE_RECONCILE_INTERVAL", "1")
    # The default storage Secret the chart points the operator at, in the study's namespace.
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    control_plane.kubectl(
        *("create", "secret", "generic", "kubetune-postgres", "--namespace", namespace),
        f"--from-literal=url={storage_url}",
    )

    studies = StudyClient(control_plane, namespace)
    study = small_cpu_study("chart-rbac")
    with run_operator(namespace) as runner:
        studies.apply(study)

        def handled() -> dict[str, Any] | None:
            body = studies.study("chart-rbac") or {}
            status = body.get("status") or {}
            runners = studies.pods("chart-rbac")
            done = status.get("observedGeneration") and len(runners) == 2
            return body if done else None

        body = wait_until(
            handled, 180, "the operator to handle the study", diagnose=studies.diagnose
        )
        assert "kubetune.dev/finalizer" in body["metadata"]["finalizers"]
        assert studies.configmap("chart-rbac-spec")
        pod = studies.pods("chart-rbac")[0]
        assert pod["spec"]["containers"][0]["image"] == _env(container)["KUBETUNE_RUNNER_IMAGE"]

        studies.kubectl("delete", "hpostudy", "chart-rbac", "--wait=false")
        wait_until(
            lambda: studies.study("chart-rbac") is None,
            180,
            "the operator to finish the deleted study",
            diagnose=studies.diagnose,
        )
    forbidden = [
        line for line in runner.output.splitlines() if "Forbidden" in line or " 403" in line
    ]
    assert not forbidden, "the operator was refused:\n" + "\n".join(forbidden[:20])
