"""Run selected pods of the e2e cluster as real local processes, the way a kubelet would.

The simulated (kwok) nodes have no container runtime. For pods that a test wants to really run
(trial runners created by the operator, for instance) the :class:`PodExecutor` plays their
kubelet: it watches pods that match a label selector (default ``kubetune.dev/test-execute=true``)
and, once kube-scheduler has bound one to a node, runs the pod's first container as a process:

- argv: the container's ``command`` + ``args`` with ``$(VAR)`` references expanded (no image, so
  a container without ``command`` fails with reason ``ContainerCannotRun``);
- environment: ``PATH`` of the test process (so console scripts of the active venv are found),
  ``HOME`` (a private directory) and ``HOSTNAME`` (the pod name), then ``envFrom`` and ``env``,
  resolving ``value``, ``secretKeyRef``, ``configMapKeyRef`` and ``fieldRef`` through the API.
  An unresolvable reference leaves the pod Pending with reason ``CreateContainerConfigError``
  and is retried, as a kubelet does;
- working directory: ``workingDir`` when it exists on this machine, else a private directory;
- termination message: the process runs in a private mount namespace where a per-pod file is
  bind-mounted on ``terminationMessagePath`` (default ``/dev/termination-log``), so it writes
  where its spec says. This needs root and ``unshare``; without them no message is collected.
  ``terminationMessagePolicy: FallbackToLogsOnError`` falls back to the log tail.

The executor patches the pod status (Running, then Succeeded or Failed with the exit code and
the message; ``restartPolicy`` OnFailure/Always restart the process with a back-off), and on
graceful deletion sends SIGTERM to the process group, SIGKILL after the grace period, then
deletes the pod with grace period 0. Pods that kwok simulates carry no ``kubetune.dev/
test-execute`` label; ``kwok-stages.yaml`` leaves pods with that label to this executor.

The process output goes to ``<work_dir>/<namespace>_<name>_<uid>/log``; see :meth:`logs`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes

__all__ = ["DEFAULT_LABEL_SELECTOR", "EXECUTE_LABEL", "PodExecutor"]

EXECUTE_LABEL = "kubetune.dev/test-execute"
DEFAULT_LABEL_SELECTOR = f"{EXECUTE_LABEL}=true"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The kubelet's limits for one container's termination message and for the log fallback.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
WATCH_TIMEOUT_SECONDS = 5
REQUEST_TIMEOUT_SECONDS = 30
LOCAL_IP = "127.0.0.1"

log = logging.getLogger(__name__)

# Bind the message file onto the path the pod expects, inside the private mount namespace, then
# become the container command. A missing target is created first (an empty file), since a bind
# mount needs one; that file stays on the host.
_MOUNT_AND_EXEC = (
    "src=$1 dst=$2; shift 2; "
    'if [ ! -e "$dst" ]; then mkdir -p "$(dirname "$dst")" && : >>"$dst" || exit 127; fi; '
    'mount --bind "$src" "$dst" || exit 127; exec "$@"'
)


class _ConfigError(Exception):
    """A reference in the container's environment cannot be resolved (yet)."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` from ``env`` like the kubelet: ``$$`` escapes, unknown names stay."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _field_value(pod: Any, path: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": LOCAL_IP,
        "status.hostIP": LOCAL_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, mapping in (
        ("metadata.labels", meta.labels),
        ("metadata.annotations", meta.annotations),
    ):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((mapping or {}).get(path[len(prefix) + 2 : -2], ""))
    raise _ConfigError(f"fieldRef {path!r} is not supported by the test PodExecutor")


class _Resolver:
    """Resolves a container's environment through the API, one read per object."""

    def __init__(self, core: Any, namespace: str) -> None:
        self._core = core
        self._namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def _data(self, kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self._cache:
            try:
                if kind == "Secret":
                    obj = self._core.read_namespaced_secret(
                        name, self._namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )
                    data = {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
                else:
                    obj = self._core.read_namespaced_config_map(
                        name, self._namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )
                    data = dict(obj.data or {})
                self._cache[key] = data
            except ApiException as error:
                if error.status != 404:
                    raise
                self._cache[key] = None
        return self._cache[key]

    def key(self, kind: str, name: str, key: str, optional: bool | None) -> str | None:
        data = self._data(kind, name)
        if data is None:
            if optional:
                return None
            raise _ConfigError(f'{kind.lower()} "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise _ConfigError(f"couldn't find key {key} in {kind} {self._namespace}/{name}")
        return data[key]

    def all(self, kind: str, name: str, optional: bool | None) -> dict[str, str]:
        data = self._data(kind, name)
        if data is None:
            if optional:
                return {}
            raise _ConfigError(f'{kind.lower()} "{name}" not found')
        return data


def resolve_environment(core: Any, pod: Any, container: Any) -> dict[str, str]:
    """The container's ``envFrom`` + ``env`` as the kubelet would compute them.

    Raises:
        _ConfigError: a referenced Secret, ConfigMap or key is missing (and not optional).
    """
    resolver = _Resolver(core, pod.metadata.namespace)
    env: dict[str, str] = {}
    for source in container.env_from or []:
        prefix = source.prefix or ""
        if source.secret_ref is not None:
            data = resolver.all("Secret", source.secret_ref.name, source.secret_ref.optional)
        elif source.config_map_ref is not None:
            ref = source.config_map_ref
            data = resolver.all("ConfigMap", ref.name, ref.optional)
        else:
            continue
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.env or []:
        source = var.value_from
        if source is None:
            env[var.name] = expand_references(var.value or "", env)
            continue
        value: str | None
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            value = resolver.key("Secret", ref.name, ref.key, ref.optional)
        elif source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            value = resolver.key("ConfigMap", ref.name, ref.key, ref.optional)
        elif source.field_ref is not None:
            value = _field_value(pod, source.field_ref.field_path)
        else:
            raise _ConfigError(
                f"env {var.name}: only value, secretKeyRef, configMapKeyRef and fieldRef are "
                "supported by the test PodExecutor"
            )
        if value is not None:
            env[var.name] = value
    return env


class _PodRun(threading.Thread):
    """Runs one pod: its process (with restarts), its status, its deletion."""

    def __init__(self, executor: PodExecutor, pod: Any) -> None:
        meta = pod.metadata
        super().__init__(name=f"pod-executor-{meta.namespace}/{meta.name}", daemon=True)
        self.executor = executor
        self.pod = pod
        self.namespace: str = meta.namespace
        self.pod_name: str = meta.name
        self.uid: str = meta.uid
        self.container = pod.spec.containers[0]
        self.dir = executor.work_dir / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log"
        self.message_path = self.dir / "termination-log"
        self.process: subprocess.Popen[bytes] | None = None
        self.deletion_requested = threading.Event()
        self.grace_seconds = 30.0
        self.shutting_down = threading.Event()
        self._started_at = ""
        self._restarts = 0
        self._last_state: dict[str, Any] | None = None
        self._waiting_message = ""
        self._log_offset = 0

    # -- signals from the watch thread and the executor

    def request_deletion(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.deletion_requested.set()

    def shutdown(self) -> None:
        """Stop the process without touching the API (the executor is stopping)."""
        self.shutting_down.set()
        self.deletion_requested.set()
        self.grace_seconds = min(self.grace_seconds, 5.0)

    # -- the thread

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod executor: running %s/%s failed", self.namespace, self.pod_name)
        finally:
            self._kill_group(signal.SIGKILL)

    def _run(self) -> None:
        policy = self.pod.spec.restart_policy or "Always"
        backoff = 1.0
        while not self.deletion_requested.is_set():
            argv = list(self.container.command or []) + list(self.container.args or [])
            if not self.container.command:
                self._patch_terminated(
                    "Failed", 128, "ContainerCannotRun",
                    "the test PodExecutor runs the container's command; this container has none",
                )  # fmt: skip
                break
            try:
                env = resolve_environment(self.executor.core, self.pod, self.container)
            except _ConfigError as error:
                if str(error) != self._waiting_message:
                    self._patch_waiting("CreateContainerConfigError", str(error))
                    self._waiting_message = str(error)
                self.deletion_requested.wait(1.0)
                continue
            argv = [expand_references(arg, env) for arg in argv]
            exit_code = self._execute(argv, env)
            if self.shutting_down.is_set():
                return
            if self.deletion_requested.is_set():
                break
            reason = "Completed" if exit_code == 0 else "Error"
            message = self._termination_message(exit_code)
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
            if not restart:
                phase = "Succeeded" if exit_code == 0 else "Failed"
                self._patch_terminated(phase, exit_code, reason, message)
                break
            self._restarts += 1
            self._last_state = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "message": message or None,
                    "startedAt": self._started_at,
                    "finishedAt": _now(),
                }
            }
            self._patch_waiting("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting")
            self.deletion_requested.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        # Terminal, or being deleted: a kubelet removes the pod once its containers are gone.
        self.deletion_requested.wait()
        if not self.shutting_down.is_set():
            self._finalize_deletion()

    def _execute(self, argv: list[str], env: Mapping[str, str]) -> int:
        path = self.container.termination_message_path or DEFAULT_TERMINATION_MESSAGE_PATH
        self.message_path.write_bytes(b"")
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "HOSTNAME": self.pod_name,
            **self.executor.extra_env,
            **env,
        }
        command = list(argv)
        if self.executor.can_map_message_path:
            command = [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _MOUNT_AND_EXEC, "kubetune-pod", str(self.message_path), path,
                *argv,
            ]  # fmt: skip
        command = ["setpriv", "--pdeathsig", "KILL", *command]
        working_dir = self.container.working_dir
        cwd = working_dir if working_dir and os.path.isdir(working_dir) else str(self.dir)
        with self.log_path.open("ab") as log_file:
            # The log-tail fallback of the termination message reads this run's output only.
            self._log_offset = log_file.tell()
            try:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as error:
                log_file.write(f"cannot start {argv!r}: {error}\n".encode())
                return 127
        self._started_at = _now()
        self._patch_running()
        return self._wait()

    def _wait(self) -> int:
        assert self.process is not None
        kill_at: float | None = None
        while True:
            try:
                code = self.process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.deletion_requested.is_set():
                if kill_at is None:
                    self._kill_group(signal.SIGTERM)
                    kill_at = time.monotonic() + self.grace_seconds
                elif time.monotonic() >= kill_at:
                    self._kill_group(signal.SIGKILL)
        # Children the command left behind in its group go with it.
        self._kill_group(signal.SIGKILL)
        return 128 - code if code < 0 else code

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _termination_message(self, exit_code: int) -> str:
        data = b""
        with contextlib.suppress(OSError):
            data = self.message_path.read_bytes()[:MAX_MESSAGE_BYTES]
        message = data.decode(errors="replace")
        policy = self.container.termination_message_policy or "File"
        if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                lines = log_file.read().splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        return message

    # -- API calls

    def _container_status(self, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.container.name,
            "image": self.container.image or "",
            "imageID": "",
            "containerID": f"kubetune-executor://{self.uid}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": self._restarts,
            "state": state,
        }
        if self._last_state is not None:
            status["lastState"] = self._last_state
        return status

    def _conditions(self, ready: bool, reason: str | None) -> list[dict[str, Any]]:
        now = _now()
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        ]
        for kind in ("ContainersReady", "Ready"):
            condition = {"type": kind, "status": str(ready), "lastTransitionTime": now}
            if reason:
                condition["reason"] = reason
            conditions.append(condition)
        return conditions

    def _patch_status(self, status: dict[str, Any]) -> None:
        if self.shutting_down.is_set():
            return
        status.setdefault("hostIP", LOCAL_IP)
        status.setdefault("hostIPs", [{"ip": LOCAL_IP}])
        status.setdefault("startTime", self._started_at or _now())
        try:
            self.executor.core.patch_namespaced_pod_status(
                self.pod_name,
                self.namespace,
                {"status": status},
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def _patch_running(self) -> None:
        state = {"running": {"startedAt": self._started_at}}
        self._patch_status(
            {
                "phase": "Running",
                "podIP": LOCAL_IP,
                "podIPs": [{"ip": LOCAL_IP}],
                "conditions": self._conditions(True, None),
                "containerStatuses": [self._container_status(state, True)],
            }
        )

    def _patch_waiting(self, reason: str, message: str) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        self._patch_status(
            {
                "conditions": self._conditions(False, "ContainersNotReady"),
                "containerStatuses": [self._container_status(state, False)],
            }
        )

    def _patch_terminated(self, phase: str, exit_code: int, reason: str, message: str) -> None:
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": self._started_at or _now(),
            "finishedAt": _now(),
        }
        if message:
            terminated["message"] = message
        self._patch_status(
            {
                "phase": phase,
                "conditions": self._conditions(False, "PodCompleted"),
                "containerStatuses": [self._container_status({"terminated": terminated}, False)],
            }
        )

    def _finalize_deletion(self) -> None:
        body = k8s.client.V1DeleteOptions(
            grace_period_seconds=0,
            preconditions=k8s.client.V1Preconditions(uid=self.uid),
        )
        with contextlib.suppress(ApiException):
            self.executor.core.delete_namespaced_pod(
                self.pod_name, self.namespace, body=body, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )


class PodExecutor:
    """Plays the kubelet for pods matching ``label_selector``; see the module docstring.

    Args:
        api_client_factory: Makes a ``kubernetes.client.ApiClient`` (admin); called twice, for the
            watch and for the pod updates, so the two never share a connection.
        work_dir: Where each pod gets a directory (its HOME, log and termination-message file).
        label_selector: Which pods to run, in every namespace.
        extra_env: Added to every process's environment before the pod's own variables.
    """

    def __init__(
        self,
        api_client_factory: Callable[[], Any],
        work_dir: Path | str,
        *,
        label_selector: str = DEFAULT_LABEL_SELECTOR,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.label_selector = label_selector
        self.extra_env = dict(extra_env or {})
        self.can_map_message_path = os.geteuid() == 0 and shutil.which("unshare") is not None
        self._api_client_factory = api_client_factory
        self._client = api_client_factory()
        self.core = k8s.client.CoreV1Api(self._client)
        self._runs: dict[str, _PodRun] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_loop, name="pod-executor", daemon=True)
        self._watch_error: BaseException | None = None

    def __enter__(self) -> PodExecutor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PodExecutor:
        if not self.can_map_message_path:
            log.warning(
                "pod executor: not root or no unshare; termination messages are not collected"
            )
        self._watcher.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop watching and end every process (SIGTERM, then SIGKILL); pods are left as is."""
        self._stopping.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.shutdown()
        deadline = time.monotonic() + timeout
        for run in runs:
            run.join(max(0.1, deadline - time.monotonic()))
        self._watcher.join(max(0.1, deadline - time.monotonic()))
        self._client.close()

    def logs(self, namespace: str, name: str) -> str:
        """The output (stdout and stderr) of the pod's process, across restarts."""
        with self._lock:
            runs = [
                r for r in self._runs.values() if (r.namespace, r.pod_name) == (namespace, name)
            ]
        return "".join(r.log_path.read_text(errors="replace") for r in runs if r.log_path.exists())

    @property
    def pids(self) -> list[int]:
        """Process ids of the pods' processes that are still running."""
        with self._lock:
            runs = list(self._runs.values())
        return [r.process.pid for r in runs if r.process is not None and r.process.poll() is None]

    # -- watching

    def _watch_loop(self) -> None:
        client = self._api_client_factory()
        core = k8s.client.CoreV1Api(client)
        try:
            while not self._stopping.is_set():
                try:
                    self._list_and_watch(core)
                except Exception as error:  # the API server restarts, a watch expires, ...
                    if not self._stopping.is_set():
                        log.warning("pod executor: watch failed (%s); listing again", error)
                        self._stopping.wait(1.0)
        finally:
            client.close()

    def _list_and_watch(self, core: Any) -> None:
        pods = core.list_pod_for_all_namespaces(
            label_selector=self.label_selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        for pod in pods.items:
            self._handle(pod, deleted=False)
        version = pods.metadata.resource_version
        while not self._stopping.is_set():
            watch = k8s.watch.Watch()
            for event in watch.stream(
                core.list_pod_for_all_namespaces,
                label_selector=self.label_selector,
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                allow_watch_bookmarks=True,
                _request_timeout=WATCH_TIMEOUT_SECONDS + REQUEST_TIMEOUT_SECONDS,
            ):
                if event["type"] == "ERROR":
                    return  # usually 410 Gone: list again
                # A BOOKMARK's object is not a full pod; the raw object always has the version.
                version = event["raw_object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._handle(event["object"], deleted=event["type"] == "DELETED")
                if self._stopping.is_set():
                    watch.stop()

    def _handle(self, pod: Any, *, deleted: bool) -> None:
        uid = pod.metadata.uid
        with self._lock:
            if self._stopping.is_set():
                return
            run = self._runs.get(uid)
            if deleted:
                # Gone from the API without us (forced deletion): nothing may keep running.
                if run is not None:
                    run.shutdown()
                return
            if pod.metadata.deletion_timestamp is not None:
                grace = pod.metadata.deletion_grace_period_seconds
                if run is None:
                    run = _PodRun(self, pod)
                    self._runs[uid] = run
                    run.request_deletion(0)
                    run.start()
                else:
                    run.request_deletion(float(grace if grace is not None else 30))
                return
            if run is not None or not pod.spec.node_name:
                return
            if (pod.status.phase or "Pending") in ("Succeeded", "Failed"):
                return
            run = _PodRun(self, pod)
            self._runs[uid] = run
            run.start()
