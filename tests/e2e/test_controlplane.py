"""The e2e control plane itself: API server, admission, RBAC, scheduler, kwok, helm."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until
from tests.harness.operator_fixtures import wait_established
from tests.harness.simulated_cluster import NodeGroup

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes

pytestmark = pytest.mark.e2e

KUBERNETES_VERSION = "v1.37.2"


def process_groups_alive(groups: set[int]) -> list[str]:
    """Processes (``pid command``) whose process group is one of ``groups``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command may contain spaces and parentheses; fields resume after the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in groups and state != "Z":
            alive.append(f"{entry.name} {stat[: stat.rindex(')') + 1]}")
    return alive


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections of the old server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_starts_and_stops_cleanly_twice(control_plane_bin_dir: Path, tmp_path: Path) -> None:
    for run in range(2):
        plane = ControlPlane(control_plane_bin_dir, tmp_path / f"run-{run}")
        with plane:
            groups = set(plane.pids)
            assert len(groups) == 5, "etcd, apiserver, controller manager, scheduler and kwok"
            port = int(plane.server.rsplit(":", 1)[1])
            version = json.loads(plane.kubectl("version", "-o", "json").stdout)
            assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
            namespaces = plane.kubectl("get", "namespaces", "-o", "name").stdout.split()
            assert "namespace/kube-system" in namespaces
        assert plane.pids == []
        assert process_groups_alive(groups) == []
        assert port_is_free(port), f"port {port} of run {run} is still in use"


# --- CRDs -----------------------------------------------------------------------------------

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.kubetune.dev
spec:
  group: e2e.kubetune.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: "!has(self.maxReplicas) || self.replicas <= self.maxReplicas"
              message: replicas must not exceed maxReplicas
            properties:
              size: {type: integer, minimum: 1}
              replicas: {type: integer, default: 1}
              maxReplicas: {type: integer}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def widget(name: str, **spec: int) -> str:
    body = {"apiVersion": "e2e.kubetune.dev/v1", "kind": "Widget", "metadata": {"name": name}}
    return yaml.safe_dump({**body, "spec": spec})


@pytest.fixture
def widget_crd(control_plane: ControlPlane) -> Any:
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    wait_established(control_plane, "widgets.e2e.kubetune.dev")
    # Discovery (and so kubectl) learns about the new resource a moment after Established.
    wait_until(
        lambda: control_plane.kubectl("get", "widgets", "-A", check=False).returncode == 0,
        30,
        "kubectl to know widgets",
    )
    yield
    control_plane.kubectl("delete", "crd", "widgets.e2e.kubetune.dev", "--wait=false")


def test_crd_schema_cel_and_status_subresource(
    control_plane: ControlPlane, namespace: str, widget_crd: Any
) -> None:
    kubectl = control_plane.kubectl
    kubectl("apply", "-n", namespace, "-f", "-", input=widget("ok", size=3, maxReplicas=2))
    served = json.loads(kubectl("get", "widget", "ok", "-n", namespace, "-o", "json").stdout)
    assert served["spec"] == {"size": 3, "replicas": 1, "maxReplicas": 2}, "default applied"

    schema = kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("small", size=0), check=False
    )
    assert schema.returncode != 0
    assert (
        "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        in (schema.stderr)
    )

    cel = kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=widget("crowded", size=1, replicas=5, maxReplicas=2), check=False,
    )  # fmt: skip
    assert cel.returncode != 0
    assert "spec: Invalid value" in cel.stderr
    assert "replicas must not exceed maxReplicas" in cel.stderr

    # The status subresource: /status changes status only, the main resource ignores status.
    kubectl(
        "patch", "widget", "ok", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready"}}',
    )  # fmt: skip
    kubectl(
        "patch", "widget", "ok", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"size": 4}, "status": {"phase": "Ignored"}}',
    )  # fmt: skip
    after = json.loads(kubectl("get", "widget", "ok", "-n", namespace, "-o", "json").stdout)
    assert after["status"] == {"phase": "Ready"}
    assert after["spec"]["size"] == 4
    assert after["metadata"]["generation"] == 2, "only the spec change bumps the generation"


# --- RBAC -----------------------------------------------------------------------------------


def test_rbac_refuses_a_service_account_until_a_role_grants_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    account = f"system:serviceaccount:{namespace}:robot"
    with control_plane.api_client() as admin:
        core = k8s.client.CoreV1Api(admin)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
        request = {"spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"]}}
        token = core.create_namespaced_service_account_token("robot", namespace, request)
        token = token.status.token

        def can_list_pods() -> subprocess.CompletedProcess[str]:
            return control_plane.kubectl(
                "auth", "can-i", "list", "pods", "-n", namespace, f"--as={account}", check=False
            )

        refused = can_list_pods()
        assert (refused.returncode, refused.stdout.strip()) == (1, "no")
        with control_plane.api_client(token=token) as robot:
            with pytest.raises(ApiException) as forbidden:
                k8s.client.CoreV1Api(robot).list_namespaced_pod(namespace)
            assert forbidden.value.status == 403
            message = json.loads(forbidden.value.body or "{}")["message"]
            assert f'User "{account}" cannot list resource "pods"' in message

            rbac = k8s.client.RbacAuthorizationV1Api(admin)
            rbac.create_namespaced_role(
                namespace,
                {
                    "metadata": {"name": "pod-reader"},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
                },
            )
            rbac.create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": "robot-reads-pods"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "pod-reader",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": "robot"}],
                },
            )
            granted = wait_until(lambda: can_list_pods().returncode == 0, 30, "the Role to apply")
            assert granted
            assert can_list_pods().stdout.strip() == "yes"
            pods = k8s.client.CoreV1Api(robot).list_namespaced_pod(namespace)
            assert pods.items == []
            cannot_delete = control_plane.kubectl(
                "auth", "can-i", "delete", "pods", "-n", namespace, f"--as={account}", check=False
            )
            assert cannot_delete.stdout.strip() == "no"


# --- Pod security ---------------------------------------------------------------------------


def pod(name: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/e2e:0", **container}]},
    }


def test_pod_security_restricted_namespace(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    with control_plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        with pytest.raises(ApiException) as rejected:
            core.create_namespaced_pod(
                namespace, pod("privileged", securityContext={"privileged": True})
            )
        assert rejected.value.status == 403
        message = json.loads(rejected.value.body or "{}")["message"]
        assert 'violates PodSecurity "restricted:latest": privileged' in message

        compliant = pod(
            "compliant",
            securityContext={
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        )
        created = core.create_namespaced_pod(namespace, compliant)
        assert created.metadata.name == "compliant"


# --- Scheduling on the simulated GPU cluster -------------------------------------------------


def isolated(groups: list[NodeGroup]) -> tuple[list[NodeGroup], dict[str, str]]:
    """The groups labelled with a fresh cluster id, and the node selector for that id."""
    selector = {"e2e.kubetune.dev/cluster": uuid.uuid4().hex[:8]}
    labelled = [dataclasses.replace(g, labels={**g.labels, **selector}) for g in groups]
    return labelled, selector


def gpu_pod(name: str, selector: dict[str, str], resource: str, count: int) -> dict[str, Any]:
    body = pod(name, resources={"limits": {resource: str(count)}})
    body["spec"]["nodeSelector"] = selector
    return body


def scheduled_condition(core: Any, namespace: str, name: str) -> Any:
    status = core.read_namespaced_pod(name, namespace).status
    return next((c for c in status.conditions or [] if c.type == "PodScheduled"), None)


def test_mig_pod_lands_only_on_a_node_with_that_profile(
    control_plane: ControlPlane,
    namespace: str,
    simulated_cluster: Callable[..., list[str]],
) -> None:
    groups, selector = isolated(
        [
            NodeGroup(count=2, gpu="H100-80GB", gpus=8),
            NodeGroup(count=2, gpu="A100-80GB", gpus=1, mig={"1g.10gb": 7}),
            NodeGroup(count=1, gpu="A100-80GB", gpus=2, mig={"2g.20gb": 3, "1g.10gb": 1}),
            NodeGroup(count=2),
        ]
    )
    nodes = simulated_cluster(groups)
    mig_node = nodes[4]
    with control_plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        node = core.read_node(mig_node)
        assert node.status.allocatable["nvidia.com/mig-2g.20gb"] == "6"
        assert node.metadata.labels["nvidia.com/mig.strategy"] == "mixed"
        for index in range(3):
            name = f"mig-{index}"
            core.create_namespaced_pod(
                namespace, gpu_pod(name, selector, "nvidia.com/mig-2g.20gb", 1)
            )
        for index in range(3):
            name = f"mig-{index}"
            bound = wait_until(
                lambda: core.read_namespaced_pod(name, namespace).spec.node_name,  # noqa: B023
                30,
                "the MIG pod to be scheduled",
            )
            assert bound == mig_node
            # kwok plays the kubelet of the simulated node.
            wait_until(
                lambda: (
                    core.read_namespaced_pod(name, namespace).status.phase  # noqa: B023
                    == "Running"
                ),
                30,
                "kwok to run the pod",
            )


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    control_plane: ControlPlane,
    namespace: str,
    simulated_cluster: Callable[..., list[str]],
) -> None:
    groups, selector = isolated(
        [NodeGroup(count=2, gpu="H100-80GB", gpus=8), NodeGroup(count=1, gpu="L4", gpus=4)]
    )
    simulated_cluster(groups)
    with control_plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        core.create_namespaced_pod(namespace, gpu_pod("greedy", selector, "nvidia.com/gpu", 9))
        condition = wait_until(
            lambda: scheduled_condition(core, namespace, "greedy"),
            30,
            "the scheduler to give up on the pod",
        )
        assert (condition.status, condition.reason) == ("False", "Unschedulable")
        assert "3 Insufficient nvidia.com/gpu" in condition.message
        pending = core.read_namespaced_pod("greedy", namespace)
        assert pending.status.phase == "Pending"
        assert pending.spec.node_name is None


def test_pods_filling_every_mig_slice_are_all_bound(
    control_plane: ControlPlane,
    namespace: str,
    simulated_cluster: Callable[..., list[str]],
) -> None:
    groups, selector = isolated(
        [
            NodeGroup(count=2, gpu="A100-80GB", gpus=1, mig={"1g.10gb": 7}),
            NodeGroup(count=1, gpu="H200-141GB", gpus=2, mig={"1g.18gb": 7}),
        ]
    )
    simulated_cluster(groups)
    resources = {"nvidia.com/mig-1g.10gb": 2 * 7, "nvidia.com/mig-1g.18gb": 2 * 7}
    with control_plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        names = []
        for resource, slices in resources.items():
            for index in range(slices):
                name = f"{resource.rsplit('-', 1)[1].replace('.', '-')}-{index}"
                core.create_namespaced_pod(namespace, gpu_pod(name, selector, resource, 1))
                names.append(name)

        def unbound() -> list[str]:
            pods = core.list_namespaced_pod(namespace).items
            return [p.metadata.name for p in pods if not p.spec.node_name]

        wait_until(lambda: not unbound(), 60, "every slice to be taken")
        assert len(names) == 28
        # The cluster is full: one more slice does not fit.
        core.create_namespaced_pod(
            namespace, gpu_pod("one-too-many", selector, "nvidia.com/mig-1g.10gb", 1)
        )
        condition = wait_until(
            lambda: scheduled_condition(core, namespace, "one-too-many"),
            30,
            "the extra pod to be unschedulable",
        )
        assert condition.reason == "Unschedulable"
        assert "Insufficient nvidia.com/mig-1g.10gb" in condition.message


def test_helm_lint_and_template(control_plane: ControlPlane, tmp_path: Path) -> None:
    control_plane.helm("create", "demo", cwd=tmp_path)
    lint = control_plane.helm("lint", str(tmp_path / "demo"))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout

    rendered = control_plane.helm(
        "template", "e2e", str(tmp_path / "demo"), "--namespace", "default"
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    # The real API server accepts what helm rendered.
    control_plane.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", input=rendered)

    (tmp_path / "demo" / "templates" / "broken.yaml").write_text("{{ .Values.missing.field }}\n")
    broken = control_plane.helm("lint", str(tmp_path / "demo"), check=False)
    assert broken.returncode != 0
    assert "nil pointer evaluating interface {}.field" in broken.stdout + broken.stderr
