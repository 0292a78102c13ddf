"""A real Kubernetes node for the e2e cluster: kubelet, containerd, runc, a bridge CNI and
kube-proxy, in namespaces of its own.

Everything the node does stays inside what it creates:

* a **PID namespace** whose init is a sleeping holder process: killing it ends every process of
  the node (containerd's shims and every container included), so a failed or killed test run
  leaves nothing behind; the holder dies with the test process (``--kill-child``, pdeathsig);
* a **mount namespace**: a tmpfs on ``/run`` (containerd's state, pods' network namespaces),
  the snapshots' overlay mounts, and the kernel settings the kubelet checks
  (``protectKernelDefaults``) bind-mounted over ``/proc/sys`` with the values it expects, so it
  never writes the machine's own;
* a **network namespace** with an interface of its own (the node's address and a gateway address,
  where the API server and PostgreSQL of this machine's loopback are exposed by
  :class:`tests.harness.netns.Relays`), the CNI bridge of the pods and kube-proxy's rules;
* a **cgroup subtree** ``/kubetune-node-<pid>`` in each v1 hierarchy (the kubelet's
  ``cgroupRoot``), removed on stop; containers get their memory limits there, so an
  over-limit container is OOMKilled by the kernel;
* a work directory under the cache (containerd's root, the kubelet's root, pod logs), removed
  on stop; leftovers of a run whose process died are removed by the next one.

The API server reaches the kubelet (logs, exec) and pods (service proxy) through the control
plane's :class:`tests.harness.netns.EgressProxy`, which this node registers its subnets with.

Images are OCI archives imported into containerd at start (``hack/image/build.sh`` makes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.harness.controlplane import (
    Component,
    ControlPlane,
    ControlPlaneError,
    log_tail,
    wait_for_component,
)
from tests.harness.netns import NODE_GATEWAY

__all__ = ["NODE_TAINT", "NodeNetwork", "RealNode"]

#: Only pods that tolerate this taint land on the real node (kwok's simulated pods never do).
NODE_TAINT = "kubetune.dev/real-node"
#: The sysctls the kubelet checks with protectKernelDefaults, and the values it expects.
KERNEL_DEFAULTS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class NodeNetwork:
    """Addresses inside the node's network namespace (none of them exists on the machine)."""

    node_ip: str = "10.200.0.2"
    #: Where this machine's loopback services are exposed to the node and its pods.
    gateway: str = NODE_GATEWAY
    node_cidr: str = "10.200.0.0/24"
    #: Pod addresses; apart from kwok's 10.244.0.0/16 so the egress proxy can tell them apart.
    pod_cidr: str = "10.88.0.0/24"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, pids, ..., name=systemd)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        raise ControlPlaneError("the real test node supports cgroup v1 only (found cgroup v2)")
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())


def _remove_cgroup_tree(name: str) -> None:
    """rmdir ``/<name>`` and everything below it in every hierarchy, deepest first."""
    for hierarchy in _hierarchies():
        top = hierarchy / name
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*dirs, top]:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # processes still exiting


class RealNode:
    """One kubelet node running real containers, joined to ``plane``.

    Attributes:
        name: The Node's name.
        network: Its addresses.
        work_dir: containerd's and the kubelet's state, pod logs, component logs.
    """

    def __init__(
        self,
        plane: ControlPlane,
        runtime_root: Path,
        images: Sequence[Path],
        *,
        sandbox_image: str,
        name: str = "kubetune-node",
        network: NodeNetwork | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.plane = plane
        self.name = name
        self.network = network or NodeNetwork()
        self.images = list(images)
        self.sandbox_image = sandbox_image
        self.start_timeout = start_timeout
        self.runtime_root = runtime_root
        self.id = f"kubetune-node-{os.getpid()}"
        self.work_dir = runtime_root / self.id
        self.cgroup_root = f"/{self.id}"
        self._holder: subprocess.Popen[bytes] | None = None
        self._holder_pid: int | None = None
        self._components: list[Component] = []
        self._exposed: set[int] = set()

    # -- lifecycle

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> RealNode:
        for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables",
                     "unshare", "nsenter", "setpriv", "ip", "mount"):  # fmt: skip
            if shutil.which(tool) is None:
                raise ControlPlaneError(
                    f"{tool} is not installed; hack/test.sh installs the real node's packages"
                )
        if not Path("/usr/lib/cni/bridge").exists():
            raise ControlPlaneError("the CNI plugins are missing (containernetworking-plugins)")
        self.clean_leftovers(self.runtime_root)
        for sub in ("logs", "pod-logs", "kubelet", "containerd", "cni/net.d", "cni/ipam",
                    "sysctl", "pki"):  # fmt: skip
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_holder()
            self._set_up_namespaces()
            self._make_cgroups()
            self._write_configs()
            self._start_containerd()
            self._import_images()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every process of the node, then remove its cgroups, routes and files."""
        if self._holder_pid is not None:
            self.plane.egress.unroute(self._holder_pid)
            # The init of the node's PID namespace: the kernel ends everything in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._holder_pid, signal.SIGKILL)
        if self._holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._holder.wait(15)
            self._holder_log.close()
        while self._components:
            self._components.pop().stop(timeout=5)
        self._holder = None
        self._holder_pid = None
        _remove_cgroup_tree(self.id)
        with contextlib.suppress(Exception):
            self._delete_node_object()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    @staticmethod
    def clean_leftovers(runtime_root: Path) -> None:
        """Remove what nodes of test processes that no longer run left behind."""
        candidates = {p.name for p in runtime_root.glob("kubetune-node-*")}
        with contextlib.suppress(ControlPlaneError):
            for hierarchy in _hierarchies():
                candidates |= {p.name for p in hierarchy.glob("kubetune-node-*")}
        for name in sorted(candidates):
            pid = name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
                continue
            _remove_cgroup_tree(name)
            shutil.rmtree(runtime_root / name, ignore_errors=True)

    # -- what tests use

    @property
    def pid(self) -> int:
        """Host PID of the node's init (its namespaces are ``/proc/<pid>/ns/*``)."""
        assert self._holder_pid is not None, "the node is not started"
        return self._holder_pid

    def expose(self, port: int) -> str:
        """Make ``127.0.0.1:port`` of this machine reachable from the node's pods; returns the
        ``host:port`` they use."""
        if port not in self._exposed:
            self.plane.relays.expose(self.pid, self.network.gateway, port)
            self._exposed.add(port)
        return f"{self.network.gateway}:{port}"

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """Everything the pod's containers (or one of them) wrote, all restarts, as the kubelet
        stored it (``<podLogsDir>/<namespace>_<pod>_<uid>/<container>/<n>.log``). ``pod`` may
        be a glob (``op-*``) for the pods of a Deployment; a deleted pod's logs stay until the
        kubelet removes its directory."""
        out: list[str] = []
        for pod_dir in sorted((self.work_dir / "pod-logs").glob(f"{namespace}_{pod}_*")):
            for log in sorted(pod_dir.glob(f"{container or '*'}/*.log")):
                for line in log.read_text(errors="replace").splitlines():
                    # CRI log format: <time> <stream> <P|F> <text>
                    parts = line.split(" ", 3)
                    out.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(out)

    def all_pod_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in (self.work_dir / "pod-logs").rglob("*.log")
        )

    def container_processes(self) -> list[int]:
        """Host PIDs of every process in the node's pod cgroups (the containers)."""
        pids: set[int] = set()
        top = CGROUP_ROOT / "pids" / self.id / "kubepods"
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def log_tail(self, component: str, lines: int = 60) -> str:
        return log_tail(self.work_dir / "logs" / f"{component}.log", lines)

    # -- steps

    def _nsenter(self, *, pid_ns: bool = True) -> list[str]:
        args = ["nsenter", "-t", str(self.pid), "--net", "--mount"]
        return [*args, "--pid"] if pid_ns else args

    def _inside(self, script: str) -> None:
        result = subprocess.run(
            [*self._nsenter(pid_ns=False), "bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"node set-up failed: {result.stderr.strip()}\n{script}")

    def _start_holder(self) -> None:
        self._holder_log = (self.work_dir / "logs" / "namespaces.log").open("ab")
        # --kill-child: the namespace's init gets SIGKILL when unshare dies, and unshare dies
        # with this process (pdeathsig), so nothing of the node outlives the tests.
        self._holder = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "unshare",
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child=SIGKILL",
                "--mount-proc",
                "--propagation",
                "private",
                "sleep",
                "infinity",
            ],
            stdin=subprocess.DEVNULL,
            # unshare reports its child's SIGKILL on the way out; that is the normal stop.
            stdout=self._holder_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        children = Path(f"/proc/{self._holder.pid}/task/{self._holder.pid}/children")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                text = children.read_text().split()
                if text:
                    self._holder_pid = int(text[0])
                    # nsenter needs the child to have entered its namespaces (it has once it
                    # runs sleep, after unshare's exec).
                    if "sleep" in Path(f"/proc/{self._holder_pid}/comm").read_text():
                        return
            time.sleep(0.05)
        raise ControlPlaneError("the node's namespaces did not come up (unshare)")

    def _set_up_namespaces(self) -> None:
        net = self.network
        sysctl_dir = self.work_dir / "sysctl"
        binds: list[str] = []
        for key, value in KERNEL_DEFAULTS.items():
            current = Path("/proc/sys", key).read_text().strip()
            if current != value:
                path = sysctl_dir / key.replace("/", ".")
                path.write_text(value + "\n")
                binds.append(f"mount --bind {path} /proc/sys/{key}")
        self._inside(
            "\n".join(
                [
                    "ip link set lo up",
                    # A veth pair with both ends inside: this kernel has no dummy devices.
                    "ip link add eth0 type veth peer name eth0-peer",
                    "ip link set eth0-peer up",
                    f"ip addr add {net.node_ip}/24 dev eth0",
                    f"ip addr add {net.gateway}/32 dev eth0",
                    "ip link set eth0 up",
                    # Nothing answers beyond the node; the route only gives tools a default.
                    "ip route add default dev eth0",
                    "sysctl -q -w net.ipv4.ip_forward=1",
                    "mount -t tmpfs -o mode=755 kubetune-node-run /run",
                    "mkdir -p /run/netns /run/containerd",
                    *binds,
                ]
            )
        )
        self.plane.egress.route(net.node_cidr, self.pid)
        self.plane.egress.route(net.pod_cidr, self.pid)
        # The kubelet and kube-proxy reach the API server at the gateway address.
        self.api_port = int(self.plane.server.rsplit(":", 1)[1])
        self.expose(self.api_port)

    def _make_cgroups(self) -> None:
        """The kubelet's cgroupRoot must exist in every hierarchy (cpuset initialised)."""
        for hierarchy in _hierarchies():
            path = hierarchy / self.id
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (path / key).write_text((hierarchy / key).read_text())

    def _credentials(self) -> tuple[Path, Path]:
        plane = self.plane
        kubelet = plane.issue_kubeconfig(
            self.work_dir / "kubelet.kubeconfig",
            f"system:node:{self.name}",
            organization="system:nodes",
            server=f"https://{self.network.gateway}:{self.api_port}",
        )
        proxy = plane.issue_kubeconfig(
            self.work_dir / "kube-proxy.kubeconfig",
            "system:kube-proxy",
            server=f"https://{self.network.gateway}:{self.api_port}",
        )
        return kubelet, proxy

    def _write_configs(self) -> None:
        work = self.work_dir
        net = self.network
        state = Path("/run/containerd") / self.id
        self.containerd_socket = work / "containerd.sock"
        (work / "containerd.toml").write_text(
            f"""version = 2
root = "{work / "containerd" / "root"}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{work / "containerd" / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  # The sandbox cannot raise its own OOM score (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc")}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work / "cni" / "net.d"}"
"""
        )
        (work / "cni" / "net.d" / "10-kubetune.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "kubetune",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": net.pod_cidr}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(work / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        kubelet_kubeconfig, proxy_kubeconfig = self._credentials()
        self.kubelet_kubeconfig = kubelet_kubeconfig
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": net.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.ca_certificate)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            # This machine's cgroups are v1; the kubelet refuses them unless told otherwise.
            "failCgroupV1": False,
            # Check the kernel settings instead of writing them (the mount namespace shows the
            # expected values).
            "protectKernelDefaults": True,
            "failSwapOn": False,
            "podLogsDir": str(work / "pod-logs"),
            "registerWithTaints": [{"key": NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "runtimeRequestTimeout": "10m",
            # The machine's disk is shared: neither evict pods nor delete images over it.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": False,
            "maxPods": 40,
            "nodeStatusUpdateFrequency": "5s",
        }
        (work / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config, sort_keys=False))
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(proxy_kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "clusterCIDR": net.pod_cidr,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # The conntrack table size is the machine's: leave it.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        (work / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_config, sort_keys=False))

    def _spawn(self, name: str, argv: Sequence[str]) -> Component:
        # The component runs inside the node's namespaces; nsenter forks it into the PID
        # namespace and dies with this process, the component with nsenter.
        component = Component(
            name,
            [*self._nsenter(), "setpriv", "--pdeathsig", "KILL", *argv],
            self.work_dir / "logs",
            os.environ,
        )
        self._components.append(component)
        return component

    def _ctr(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _start_containerd(self) -> None:
        containerd = self._spawn(
            "containerd", ["containerd", "--config", str(self.work_dir / "containerd.toml")]
        )
        wait_for_component(
            containerd,
            "serving",
            lambda: self.containerd_socket.exists() and bool(self._ctr("version", timeout=5)),
            60,
        )

    def tag_image(self, source: str, target: str) -> None:
        """Make image ``source`` also known as ``target`` on the node (as a pull would)."""
        self._ctr("images", "tag", "--force", source, target, timeout=60)

    def remove_image(self, name: str) -> None:
        """Forget the image name ``name`` on the node (its content stays while another name
        refers to it)."""
        self._ctr("images", "rm", name, timeout=60)

    def _import_images(self) -> None:
        for archive in self.images:
            self.import_image(archive)

    def import_image(self, archive: Path) -> None:
        """Import an OCI archive into the node's containerd (as `ctr images import` does)."""
        self._ctr("images", "import", "--no-unpack=false", str(archive))

    def _start_kubelet(self) -> None:
        kubelet = self._spawn(
            "kubelet",
            [
                str(self.plane.bin_dir / "kubelet"),
                f"--config={self.work_dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.network.node_ip}",
                f"--root-dir={self.work_dir / 'kubelet'}",
                f"--cert-dir={self.work_dir / 'pki'}",
                f"--node-labels={NODE_TAINT}=true",
                "--v=2",
            ],
        )
        self._kubelet = kubelet

    def _start_kube_proxy(self) -> None:
        self._spawn(
            "kube-proxy",
            [
                str(self.plane.bin_dir / "kube-proxy"),
                f"--config={self.work_dir / 'kube-proxy.yaml'}",
                "--v=1",
            ],
        )

    def _wait_ready(self) -> None:
        def ready() -> bool:
            result = self.plane.kubectl("get", "node", self.name, "-o", "json", check=False)
            if result.returncode != 0:
                return False
            conditions = json.loads(result.stdout)["status"].get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for_component(self._kubelet, "Ready", ready, self.start_timeout)

    def _delete_node_object(self) -> None:
        self.plane.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")
