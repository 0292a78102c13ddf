"""Kueue (sigs.k8s.io/kueue v0.17), the real controller, on the e2e control plane's loopback.

``hack/control-plane/build.sh`` builds the ``kueue`` binary from its Go module and copies the
module's CRDs and webhook configuration next to it (``<bin>/../kueue-v0.17.0-r1/config``).
:class:`Kueue` installs and runs it as Kueue's own manifests would in a cluster, with what a
cluster would otherwise provide:

* its CRDs, with the conversion webhooks Kueue's kustomization patches in;
* its webhook configurations, restricted to what the tests enable (Kueue's own resources and
  the ``pod`` integration) and to namespaces labelled :data:`MANAGED_LABEL`, so pods elsewhere
  in the shared control plane never wait on it;
* the webhook Service as an ``ExternalName`` of ``localhost``: the API server resolves it to
  ``localhost:<port>`` and reaches it through its egress proxy, which dials this machine's
  loopback, while verifying the certificate against the Service's DNS name as in a cluster;
* Kueue's internal certificate management, which writes the serving certificate into its
  Secret and injects its CA into the webhook configurations and CRDs, as in a default install;
  the Secret's files are written into Kueue's certificate directory as the kubelet would mount
  the Secret's volume (Kueue waits for them before it serves).

The process runs in its own process group (``controlplane.Component``), logs to
``<work_dir>/kueue.log`` and is stopped by its PID; its webhook configurations are deleted
first, so nothing in the cluster waits on a webhook that is gone.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tests.harness.controlplane import Component, ControlPlane, log_tail
from tests.harness.helpers import free_port, wait_until

__all__ = ["MANAGED_LABEL", "Kueue", "kueue_config_dir"]

k8s: Any = kubernetes

VERSION = "v0.17.0"
#: Label of the namespaces whose pods Kueue manages (its managedJobsNamespaceSelector).
MANAGED_LABEL = ("kubetune.dev/kueue", "enabled")
NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
# The names Kueue's certificate rotator injects its CA into (pkg/util/cert): "<base>-<type>-
# webhook-configuration" for the Service "<base>-webhook-service", and these CRDs.
WEBHOOK_CONFIGURATIONS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
CONVERTED_CRDS = (
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "workloads.kueue.x-k8s.io",
    "cohorts.kueue.x-k8s.io",
    "multikueueclusters.kueue.x-k8s.io",
)
#: Webhooks of the enabled integration (pods) and of Kueue's own resources; the others would
#: intercept Jobs, Deployments ... that no integration of this Kueue serves.
ENABLED_GROUPS = ("", "kueue.x-k8s.io")


def kueue_config_dir(bin_dir: Path) -> Path:
    """Kueue's CRDs and webhook configuration, next to the binary the build linked."""
    return Path(os.path.realpath(bin_dir / "kueue")).parents[1] / "config"


class Kueue:
    """Kueue's controller manager for a :class:`ControlPlane`; ``start()`` then ``stop()``."""

    def __init__(self, plane: ControlPlane, work_dir: Path) -> None:
        self.plane = plane
        self.work_dir = work_dir
        self.binary = plane.bin_dir / "kueue"
        self.config_dir = kueue_config_dir(plane.bin_dir)
        self.port = free_port()
        self.health_port = free_port()
        self._process: Component | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "kueue.log"

    def missing(self) -> str | None:
        """What of Kueue's build is missing, if anything."""
        if not os.access(self.binary, os.X_OK):
            return f"{self.binary} is not built"
        for needed in (self.config_dir / "crd", self.config_dir / "webhook.yaml"):
            if not needed.exists():
                return f"{needed} is missing (Kueue's manifests, copied by the build)"
        return None

    # -- lifecycle

    def start(self) -> Kueue:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._apply(self._namespace_and_service())
            self._apply(self._crds(), server_side=True)
            for crd in (*CONVERTED_CRDS, "workloadpriorityclasses.kueue.x-k8s.io"):
                self.plane.kubectl(
                    "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s"
                )
            self._apply(self._webhook_configurations())
            config = self.work_dir / "kueue-config.yaml"
            config.write_text(yaml.safe_dump(self._configuration(), sort_keys=False))
            self._process = Component(
                "kueue",
                [str(self.binary), f"--config={config}", "--zap-log-level=2"],
                self.work_dir,
                {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove the webhooks, let Kueue release the pods it still holds, stop it by PID."""
        for kind, name in WEBHOOK_CONFIGURATIONS.items():
            self.plane.kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
        if self._process is not None:
            if self._process.running():
                # Pods being deleted keep Kueue's finalizer until Kueue removes it.
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: not self._finalized_pods(), 60, "Kueue's pods to go")
            self._process.stop()
            self._process = None

    def __enter__(self) -> Kueue:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    # -- what a cluster install would hold

    def _namespace_and_service(self) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            # Kueue's manifests hold it empty; its certificate rotator fills it.
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": NAMESPACE},
                "type": "Opaque",
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "spec": {
                    "type": "ExternalName",
                    "externalName": "localhost",
                    "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}],
                },
            },
        ]

    def _service_reference(self, path: str) -> dict[str, Any]:
        return {"namespace": NAMESPACE, "name": SERVICE, "port": self.port, "path": path}

    def _crds(self) -> list[dict[str, Any]]:
        crds = []
        for path in sorted((self.config_dir / "crd").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if crd["metadata"]["name"] in CONVERTED_CRDS:
                # As config/components/crd/patches/webhook_in_*.yaml does.
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {"service": self._service_reference("/convert")},
                        "conversionReviewVersions": ["v1"],
                    },
                }
            crds.append(crd)
        return crds

    def _webhook_configurations(self) -> list[dict[str, Any]]:
        key, value = MANAGED_LABEL
        out = []
        for document in yaml.safe_load_all((self.config_dir / "webhook.yaml").read_text()):
            if not document:
                continue
            configuration = copy.deepcopy(document)
            configuration["metadata"] = {"name": WEBHOOK_CONFIGURATIONS[document["kind"]]}
            webhooks = []
            for webhook in document["webhooks"]:
                groups = {g for rule in webhook["rules"] for g in rule["apiGroups"]}
                if not groups <= set(ENABLED_GROUPS):
                    continue
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = {"service": self._service_reference(path)}
                if groups == {""}:  # pods: only in the namespaces Kueue manages here
                    webhook["namespaceSelector"] = {"matchLabels": {key: value}}
                webhooks.append(webhook)
            configuration["webhooks"] = webhooks
            out.append(configuration)
        return out

    def _configuration(self) -> dict[str, Any]:
        key, value = MANAGED_LABEL
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {
                "host": "127.0.0.1",
                "port": self.port,
                "certDir": str(self.work_dir / "certs"),
            },
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": SERVICE,
                "webhookSecretName": SECRET,
            },
            "managedJobsNamespaceSelector": {"matchLabels": {key: value}},
            "integrations": {"frameworks": ["pod"]},
            # The visibility API server would take a fixed port (8082) on this shared machine.
            "featureGates": {"VisibilityOnDemand": False},
        }

    # -- helpers

    def _apply(self, objects: list[dict[str, Any]], server_side: bool = False) -> None:
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        flags = ["--server-side", "--force-conflicts"] if server_side else []
        self.plane.kubectl("apply", *flags, "-f", "-", input=document)

    def _wait_ready(self) -> None:
        assert self._process is not None
        process = self._process
        mounted = False
        deadline = time.monotonic() + 180
        while True:
            if not process.running():
                raise process.failure("exited before it was ready")
            if not mounted:
                mounted = self._mount_certificates()
            elif self._healthy() and self._webhooks_answer():
                return
            if time.monotonic() > deadline:
                raise process.failure("was not ready (readyz and its webhooks) after 180s")
            time.sleep(1)

    def _mount_certificates(self) -> bool:
        """Write the certificate Secret's files into Kueue's certDir once it holds them all,
        as the kubelet does for the Secret's volume in Kueue's Deployment."""
        result = self.plane.kubectl(
            "get", "secret", SECRET, "-n", NAMESPACE, "-o", "json", check=False
        )
        if result.returncode != 0:
            return False
        data = json.loads(result.stdout).get("data") or {}
        files = ("ca.crt", "tls.crt", "tls.key")
        if not all(data.get(name) for name in files):
            return False
        cert_dir = self.work_dir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            staged = cert_dir / f".{name}.tmp"
            staged.write_bytes(base64.b64decode(data[name]))
            staged.chmod(0o600)
            staged.replace(cert_dir / name)
        return True

    def _healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _webhooks_answer(self) -> bool:
        """A dry-run ResourceFlavor passes Kueue's mutating and validating webhooks."""
        flavor = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": "kubetune-readiness-probe"},
        }
        result = self.plane.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(flavor), check=False
        )
        return result.returncode == 0

    def _finalized_pods(self) -> list[str]:
        result = self.plane.kubectl("get", "pods", "-A", "-o", "json", check=False)
        if result.returncode != 0:
            return []
        return [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in json.loads(result.stdout)["items"]
            if "kueue.x-k8s.io/managed" in (p["metadata"].get("finalizers") or [])
        ]


# --------------------------------------------------------------------------- queues


def cluster_queue(
    name: str,
    quota: Mapping[str, str],
    flavor: str = "default-flavor",
    *,
    preempt_lower_priority: bool = False,
) -> dict[str, Any]:
    """A ClusterQueue with one flavor and ``quota`` (resource -> nominal quota), admitting
    workloads of every namespace; optionally preempting lower-priority ones in it."""
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": list(quota),
                "flavors": [
                    {
                        "name": flavor,
                        "resources": [
                            {"name": resource, "nominalQuota": amount}
                            for resource, amount in quota.items()
                        ],
                    }
                ],
            }
        ],
    }
    if preempt_lower_priority:
        spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": spec,
    }


def queue_objects(
    namespace: str,
    local_queue: str,
    cluster: dict[str, Any],
    flavor: str = "default-flavor",
) -> list[dict[str, Any]]:
    """The ResourceFlavor (matching every node), ``cluster`` and a LocalQueue pointing at it."""
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
        },
        cluster,
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": local_queue, "namespace": namespace},
            "spec": {"clusterQueue": cluster["metadata"]["name"]},
        },
    ]


@contextlib.contextmanager
def queues(plane: ControlPlane, objects: list[dict[str, Any]]) -> Iterator[None]:
    """Apply Kueue objects; delete them (ClusterQueues last) when the block ends."""
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    plane.kubectl("apply", "-f", "-", input=document)
    try:
        yield
    finally:
        for item in reversed(objects):
            kind, name = item["kind"].lower(), item["metadata"]["name"]
            namespace = item["metadata"].get("namespace")
            where = ["-n", namespace] if namespace else []
            plane.kubectl(
                "delete", f"{kind}.kueue.x-k8s.io", name, *where, "--ignore-not-found",
                "--wait=false", check=False,
            )  # fmt: skip
