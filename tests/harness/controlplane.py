"""A real Kubernetes control plane on loopback, for end-to-end tests.

Runs the binaries that ``hack/control-plane/build.sh`` compiles from upstream Go modules: etcd,
kube-apiserver (TLS on 127.0.0.1, RBAC, PodSecurity admission), kube-controller-manager,
kube-scheduler and, optionally, kwok, which plays the kubelet of simulated nodes. The way it is
wired follows controller-runtime's envtest and kubeadm's static pod flags.

Every component runs in its own process group, logs to ``<work_dir>/logs/<name>.log``, listens on
free loopback ports (so concurrent runs do not collide) and is killed by the kernel if the test
process dies (``setpriv --pdeathsig``). ``stop()`` terminates the groups, then kills what is left.

Example::

    with ControlPlane(bin_dir, tmp_path) as cp:
        cp.kubectl("get", "namespaces")
        core = k8s.client.CoreV1Api(cp.api_client())
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import kubernetes
import yaml

from tests.harness.helpers import REPO_ROOT, free_port
from tests.harness.netns import NODE_GATEWAY, EgressProxy, Relays

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes

__all__ = [
    "AUDITED_USER",
    "BINARIES",
    "CommandError",
    "Component",
    "ControlPlane",
    "ControlPlaneError",
    "find_bin_dir",
    "log_tail",
    "wait_for_component",
]

BUILD_SCRIPT = REPO_ROOT / "hack" / "control-plane" / "build.sh"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "helm",
    "kubectl",
    "kubelet",
    "kube-proxy",
)
KWOK_STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"
# Nodes carrying this annotation are the simulated ones kwok manages.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
ADMIN_USER = "kubetune-e2e-admin"
#: The API server's audit log records this user's requests, and no one else's: tests and
#: benchmarks run the operator as this user to count what it asks of the API server.
AUDITED_USER = "kubetune-audited-operator"


class ControlPlaneError(RuntimeError):
    """A component did not build, start or become ready; the message carries its log tail."""


class CommandError(subprocess.CalledProcessError):
    """A ``kubectl``/``helm`` command failed; unlike its base class, ``str()`` shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr or ''}".rstrip()


def find_bin_dir() -> Path | None:
    """The directory holding the control-plane binaries, or None if they are not built.

    ``KUBETUNE_CONTROL_PLANE_BIN`` wins (``hack/test.sh`` exports it after building); otherwise the
    build cache is asked, without building (``build.sh --check``).
    """
    from_env = os.environ.get("KUBETUNE_CONTROL_PLANE_BIN")
    if from_env:
        return Path(from_env)
    if not BUILD_SCRIPT.is_file() or shutil.which("go") is None:
        return None
    check = subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], capture_output=True)
    if check.returncode != 0:
        return None
    printed = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return Path(printed.stdout.strip())


def missing_binaries(bin_dir: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _make_ca(pki: Path) -> _KeyPair:
    pair = _KeyPair(pki / "ca.crt", pki / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", "7", "-subj", "/CN=kubetune-e2e-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip
    return pair


def _make_cert(
    pki: Path,
    ca: _KeyPair,
    name: str,
    *,
    common_name: str,
    organization: str | None = None,
    server_names: Sequence[str] = (),
    server_ips: Sequence[str] = (),
) -> _KeyPair:
    """A leaf certificate signed by ``ca``: a client certificate, plus serving if SANs given."""
    pair = _KeyPair(pki / f"{name}.crt", pki / f"{name}.key")
    csr = pki / f"{name}.csr"
    subject = (f"/O={organization}" if organization else "") + f"/CN={common_name}"
    _openssl(
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(pair.key), "-out", str(csr), "-subj", subject,
        cwd=pki,
    )  # fmt: skip
    usages = ["clientAuth"]
    extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
    sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
    if sans:
        usages.append("serverAuth")
        extensions.append("subjectAltName=" + ",".join(sans))
    extensions.append("extendedKeyUsage=" + ",".join(usages))
    extfile = pki / f"{name}.ext"
    extfile.write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
        "-extfile", str(extfile), "-out", str(pair.cert),
        cwd=pki,
    )  # fmt: skip
    csr.unlink()
    extfile.unlink()
    return pair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(path: Path, server: str, ca: Path, client: _KeyPair, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubetune-e2e",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [
            {"name": "kubetune-e2e", "context": {"cluster": "kubetune-e2e", "user": user}}
        ],
        "current-context": "kubetune-e2e",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- processes ----------------------------------------------------------------------------------


class Component:
    """One control-plane process in its own process group."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str]):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        # The kernel kills the component when the process that started it dies, so a crashed
        # or SIGKILLed test run leaves nothing behind.
        prefix = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        self.process = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def failure(self, what: str) -> ControlPlaneError:
        state = "running" if self.running() else f"exited with {self.process.returncode}"
        return ControlPlaneError(
            f"{self.name} {what} ({state}); last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        # The group may still hold children even when the leader has exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log.close()


def wait_for_component(
    component: Component, what: str, probe: Any, timeout: float, interval: float = 0.2
) -> None:
    """Poll ``probe`` until it is true (errors count as not yet); a component that exits first,
    or is not ``what`` after ``timeout`` seconds, raises its failure with its log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        if not component.running():
            raise component.failure(f"exited before it was {what}")
        with contextlib.suppress(Exception):
            if probe():
                return
        if time.monotonic() > deadline:
            raise component.failure(f"was not {what} after {timeout:.0f}s")
        time.sleep(interval)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


# --- the control plane --------------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler (and kwok) on loopback.

    Attributes:
        bin_dir: Where the binaries are.
        work_dir: Certificates, kubeconfigs, etcd data and logs (``logs/<component>.log``).
        kubeconfig: An admin kubeconfig (client certificate in group ``system:masters``).
        server: The API server URL, ``https://127.0.0.1:<port>``.
        env: The environment for tools: ``KUBECONFIG`` set, ``bin_dir`` first on ``PATH``.
    """

    def __init__(
        self,
        bin_dir: Path | str,
        work_dir: Path | str,
        *,
        with_kwok: bool = True,
        start_timeout: float = 120.0,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self.work_dir = Path(work_dir)
        self.with_kwok = with_kwok
        self.start_timeout = start_timeout
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.server = ""
        self.env: dict[str, str] = {}
        self._components: list[Component] = []
        self._pki = self.work_dir / "pki"
        self._ca: _KeyPair | None = None
        self._relays: Relays | None = None
        self._egress: EgressProxy | None = None

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start every component and wait until each is ready; on failure stop what started."""
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"missing binaries in {self.bin_dir}: {', '.join(missing)}; "
                f"build them with: bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}"
            )
        if shutil.which("openssl") is None:
            raise ControlPlaneError("openssl is not on PATH; it makes the test certificates")
        for sub in ("logs", "pki", "etcd"):
            (self.work_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._write_pki()
            self._start_relays()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            if self.with_kwok:
                self._start_kwok()
            self._wait_for_controllers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the components, newest first (kwok before the API server, etcd last)."""
        while self._components:
            self._components.pop().stop()
        if self._relays is not None:
            self._relays.close()
            self._relays = None
            self._egress = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the running components (their process group ids too)."""
        return [c.pid for c in self._components]

    def log_path(self, component: str) -> Path:
        return self.work_dir / "logs" / f"{component}.log"

    @property
    def ca_certificate(self) -> Path:
        """The cluster CA (it signs every certificate of this control plane)."""
        assert self._ca is not None, "the control plane is not started"
        return self._ca.cert

    @property
    def relays(self) -> Relays:
        """The TCP relays into and out of real nodes' network namespaces."""
        assert self._relays is not None, "the control plane is not started"
        return self._relays

    @property
    def egress(self) -> EgressProxy:
        """The API server's egress proxy; nodes register their subnets with it."""
        assert self._egress is not None, "the control plane is not started"
        return self._egress

    def issue_kubeconfig(
        self, path: Path, user: str, *, organization: str | None = None, server: str | None = None
    ) -> Path:
        """A kubeconfig at ``path`` for ``user`` (client certificate signed by the cluster CA,
        in group ``organization``), against ``server`` (default: this API server)."""
        assert self._ca is not None, "the control plane is not started"
        name = path.stem
        pair = _make_cert(self._pki, self._ca, name, common_name=user, organization=organization)
        return _write_kubeconfig(path, server or self.server, self._ca.cert, pair, user)

    # -- clients

    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` as admin, or with a bearer ``token`` if given."""
        if token is None:
            return k8s.config.new_client_from_config(config_file=str(self.kubeconfig))
        assert self._ca is not None, "the control plane is not started"
        configuration = k8s.client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self._ca.cert)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return k8s.client.ApiClient(configuration)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built ``kubectl`` (the server's version) against this control plane.

        Raises:
            CommandError: with ``check`` and a non-zero exit (a ``CalledProcessError`` whose
                message includes kubectl's stderr).
        """
        return self._run(
            [str(self.bin_dir / "kubectl"), *args], check=check, input=input, timeout=timeout
        )

    def helm(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built ``helm`` (with this control plane's kubeconfig)."""
        helm_home = self.work_dir / "helm"
        env = {
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        return self._run(
            [str(self.bin_dir / "helm"), *args], check=check, timeout=timeout, cwd=cwd, extra=env
        )

    def _run(
        self,
        argv: list[str],
        *,
        check: bool,
        timeout: float,
        input: str | None = None,
        cwd: Path | str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env={**self.env, **(extra or {})},
            timeout=timeout,
            cwd=cwd,
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, argv, output=result.stdout, stderr=result.stderr)
        return result

    # -- components

    def _spawn(self, name: str, argv: Sequence[str]) -> Component:
        component = Component(name, argv, self.work_dir / "logs", os.environ)
        self._components.append(component)
        return component

    def _write_pki(self) -> None:
        pki = self._pki
        self._ca = ca = _make_ca(pki)
        self._serving = _make_cert(
            pki,
            ca,
            "apiserver",
            common_name="kube-apiserver",
            server_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=["127.0.0.1", "10.96.0.1", NODE_GATEWAY],
        )
        self._admin = _make_cert(
            pki, ca, "admin", common_name=ADMIN_USER, organization="system:masters"
        )
        # The bootstrap RBAC policy grants these user names exactly what each component needs.
        self._controller_manager = _make_cert(
            pki, ca, "controller-manager", common_name="system:kube-controller-manager"
        )
        self._scheduler = _make_cert(pki, ca, "scheduler", common_name="system:kube-scheduler")
        self._front_proxy = _make_cert(pki, ca, "front-proxy", common_name="front-proxy-client")
        # What the API server shows kubelets (logs, exec, port-forward).
        self._kubelet_client = _make_cert(
            pki,
            ca,
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organization="system:masters",
        )
        _openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", "service-account.key",
            cwd=pki,
        )  # fmt: skip
        _openssl("pkey", "-in", "service-account.key", "-pubout", "-out", "service-account.pub",
                 cwd=pki)  # fmt: skip

    def _start_relays(self) -> None:
        self._relays = Relays()
        self._egress = EgressProxy(self._relays, self.work_dir / "egress.sock")

    def _egress_config(self) -> Path:
        """The API server's cluster traffic (kubelets, pods, services, webhooks) goes through
        the egress proxy, which dials into a real node's namespace where the address is its."""
        assert self._egress is not None
        path = self.work_dir / "egress-selector.yaml"
        config = {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [
                {
                    "name": "cluster",
                    "connection": {
                        "proxyProtocol": "HTTPConnect",
                        "transport": {"uds": {"udsName": str(self._egress.path)}},
                    },
                }
            ],
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=e2e",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                # Test data: durability is not worth an fsync per write on a shared disk.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._etcd_url = client_url
        wait_for_component(
            etcd, "healthy", lambda: _http_ok(f"{client_url}/health"), self.start_timeout
        )

    def _start_apiserver(self) -> None:
        assert self._ca is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self._pki
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                # The `kubernetes` Service points at the gateway address inside a real test
                # node's network namespace, where a relay forwards to this loopback port
                # (pods log in through it). Nothing listens on it out here.
                f"--advertise-address={NODE_GATEWAY}",
                f"--kubelet-client-certificate={self._kubelet_client.cert}",
                f"--kubelet-client-key={self._kubelet_client.key}",
                # Node names resolve nowhere here; their addresses route through the egress proxy.
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                f"--egress-selector-config-file={self._egress_config()}",
                f"--secure-port={port}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self._ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'service-account.pub'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                # The aggregation layer's front proxy, as kubeadm sets it up; it also gives the
                # controller manager and scheduler the request-header CA they look up.
                f"--requestheader-client-ca-file={self._ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self._front_proxy.cert}",
                f"--proxy-client-key-file={self._front_proxy.key}",
                "--authorization-mode=Node,RBAC",
                # PodSecurity is in the default set; the flag states that the tests rely on it.
                "--enable-admission-plugins=NodeRestriction,PodSecurity",
                # Privileged pods are allowed by the API server, so that PodSecurity (not this
                # flag) is what rejects them in a restricted namespace.
                "--allow-privileged=true",
                "--profiling=false",
                f"--audit-policy-file={self._audit_policy()}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--v=1",
            ],
        )
        context = ssl.create_default_context(cafile=str(self._ca.cert))
        context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        wait_for_component(
            apiserver,
            "ready (/readyz)",
            lambda: _http_ok(f"{self.server}/readyz", context),
            self.start_timeout,
        )
        _write_kubeconfig(self.kubeconfig, self.server, self._ca.cert, self._admin, ADMIN_USER)
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _audit_policy(self) -> Path:
        """Record the requests of :data:`AUDITED_USER` (verb, resource, user, times; no bodies),
        once each, when answered; nothing of anyone else."""
        path = self.work_dir / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "Metadata", "users": [AUDITED_USER]}, {"level": "None"}],
        }
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        return path

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines): the requests of :data:`AUDITED_USER`."""
        return self.work_dir / "logs" / "audit.log"

    def audited_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig at ``path`` for :data:`AUDITED_USER`, a cluster admin whose requests
        the audit log records (see :meth:`audit_events`)."""
        return self.issue_kubeconfig(path, AUDITED_USER, organization="system:masters")

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events so far (one per answered request of :data:`AUDITED_USER`)."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                events.append(json.loads(line))
        return events

    def _component_kubeconfig(self, name: str, pair: _KeyPair) -> Path:
        assert self._ca is not None
        return _write_kubeconfig(
            self.work_dir / f"{name}.kubeconfig", self.server, self._ca.cert, pair, name
        )

    def _wait_healthz(self, component: Component, port: int) -> None:
        # The component serves a self-signed certificate of its own; /healthz needs no auth.
        context = ssl._create_unverified_context()
        wait_for_component(
            component,
            "healthy (/healthz)",
            lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", context),
            self.start_timeout,
        )

    def _start_controller_manager(self) -> None:
        assert self._ca is not None
        kubeconfig = self._component_kubeconfig("controller-manager", self._controller_manager)
        port = free_port()
        component = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                f"--client-ca-file={self._ca.cert}",
                f"--root-ca-file={self._ca.cert}",
                f"--service-account-private-key-file={self._pki / 'service-account.key'}",
                f"--cluster-signing-cert-file={self._ca.cert}",
                f"--cluster-signing-key-file={self._ca.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The default set: garbage collector, namespace, job, deployment, replicaset,
                # service account and token controllers, node lifecycle, and so on.
                "--controllers=*",
                "--leader-elect=false",
                # Each controller acts as its own service account, bound to its bootstrap
                # ClusterRole (as kubeadm does); system:kube-controller-manager alone may not
                # do what the namespace or clusterrole-aggregation controllers do.
                "--use-service-account-credentials=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_healthz(component, port)

    def _start_scheduler(self) -> None:
        kubeconfig = self._component_kubeconfig("scheduler", self._scheduler)
        port = free_port()
        component = self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_healthz(component, port)

    def _start_kwok(self) -> None:
        key, value = KWOK_NODE_ANNOTATION
        # kwok reads ~/.kwok/kwok.yaml if it exists; a private HOME keeps a contributor's own
        # kwok configuration out of the tests.
        kwok_home = self.work_dir / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        self._spawn_kwok(
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={KWOK_STAGES}",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
            ],
            kwok_home,
        )

    def _spawn_kwok(self, argv: list[str], home: Path) -> None:
        component = Component(
            "kwok", argv, self.work_dir / "logs", {**os.environ, "HOME": str(home)}
        )
        self._components.append(component)
        # kwok serves nothing here; it is ready when it has logged that it watches nodes.
        wait_for_component(
            component,
            "watching nodes",
            lambda: "Watch nodes" in component.log_path.read_text(errors="replace"),
            self.start_timeout,
        )

    def _wait_for_controllers(self) -> None:
        """Wait until the service account controller has made ``default/default``.

        Until then pods cannot be created (the ServiceAccount admission plugin needs the account)
        and the first test would race the controller manager.
        """
        manager = next(c for c in self._components if c.name == "kube-controller-manager")
        with self.api_client() as client:
            core = k8s.client.CoreV1Api(client)

            def default_account_exists() -> bool:
                core.read_namespaced_service_account("default", "default")
                return True

            wait_for_component(
                manager, "creating service accounts", default_account_exists, self.start_timeout
            )
