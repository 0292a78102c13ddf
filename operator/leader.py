"""Leader election: one active operator among several replicas, through a Lease.

The chart can run several operator replicas (``operator.replicas``) so that a second one takes
over when the active one dies. ``python -m hpo_operator`` with ``KUBETUNE_LEADER_ELECTION_LEASE``
set first campaigns for that ``coordination.k8s.io`` Lease, with the Kubernetes client's leader
election (client-go's rules: a candidate takes a Lease that its holder has not renewed for
``leaseDurationSeconds``, and writes go through the Lease's resourceVersion, so two candidates
never both win), and starts kopf only once it holds the Lease. While it waits it answers the
liveness probe itself.

* The leader renews the Lease every :data:`RETRY_SECONDS`. If it cannot renew it within the
  renew deadline (two thirds of the lease duration, so before anyone may take it over), it exits
  at once: two replicas never act at the same time. The Deployment restarts it as a candidate.
* A leader that stops gracefully (SIGTERM: a rolling update, a drain) hands the Lease back, and a
  candidate takes over within :data:`RETRY_SECONDS`; one that is killed is replaced once its
  Lease expires.

Why a Lease and not kopf's peering: kopf's peering pauses every operator but the one of highest
priority, so replicas of one Deployment (one pod template) would need different priorities, it
needs kopf's own CRD in the cluster, and a killed peer is noticed only after the peering's
lifetime (a minute). A Lease is the cluster's own primitive, needs no CRD, and its RBAC is one
Role on one named object.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig as _electionconfig
from kubernetes.leaderelection import leaderelection as _leaderelection
from kubernetes.leaderelection.resourcelock import leaselock as _leaselock

__all__ = ["RETRY_SECONDS", "Leadership", "campaign", "identity"]

log = logging.getLogger("kubetune.leader")

#: Seconds between two attempts to take or renew the Lease.
RETRY_SECONDS = 2

# The client's leader election has no type hints.
k8s: Any = kubernetes
electionconfig: Any = _electionconfig
leaderelection: Any = _leaderelection
LeaseLock: Any = _leaselock.LeaseLock


def identity() -> str:
    """This process's name in the Lease: the pod's name (``POD_ID``) and a unique suffix, so a
    restarted container is a new candidate, not the holder it replaced."""
    pod = os.environ.get("POD_ID") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


class _Lock(LeaseLock):  # type: ignore[misc]  # an untyped base
    """The client's LeaseLock on our API client, that can be handed back."""

    def __init__(self, api_client: Any, namespace: str, name: str, holder: str) -> None:
        super().__init__(name, namespace, holder)
        self.api_instance = k8s.client.CoordinationV1Api(api_client)
        self.released = threading.Event()
        self._last_error: str | None = None

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        found, record = super().get(name, namespace)
        # The client retries quietly for ever; a refusal (RBAC) must show in the log.
        if not found and isinstance(record, ApiException) and record.status != 404:
            error = f"{record.status} {record.reason}"
            if error != self._last_error:
                log.warning("cannot read the Lease %s/%s: %s", namespace, name, error)
            self._last_error = error
        return bool(found), record

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return not self.released.is_set() and bool(super().create(name, namespace, election_record))

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return not self.released.is_set() and bool(super().update(name, namespace, updated_record))

    def release(self) -> None:
        """Stop renewing, and clear the holder if it is still us (a candidate then takes the
        Lease at its next attempt instead of waiting for it to expire)."""
        self.released.set()
        try:
            lease = self.api_instance.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            self.api_instance.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("handed the Lease %s/%s back", self.namespace, self.name)
        except ApiException as error:
            log.warning("could not hand the Lease back (%s); it expires by itself", error.reason)


class Leadership:
    """A won election: :meth:`release` on a graceful stop."""

    def __init__(self, lock: _Lock) -> None:
        self._lock = lock
        self.holder = str(lock.identity)

    def release(self) -> None:
        self._lock.release()


def campaign(
    api_client: Any,
    namespace: str,
    name: str,
    *,
    lease_seconds: int,
    liveness_port: int | None = None,
    on_lost: Callable[[], None] | None = None,
) -> Leadership:
    """Block until this process holds the Lease ``namespace/name``; it is then renewed in a
    thread until :meth:`Leadership.release`. Losing it calls ``on_lost`` (default: exit the
    process at once, before another replica may take over)."""
    lock = _Lock(api_client, namespace, name, identity())
    won = threading.Event()

    def lost() -> None:
        if lock.released.is_set():
            return  # handed back on purpose
        log.error("lost the Lease %s/%s: stopping so that only one operator acts", namespace, name)
        (on_lost or _exit_now)()

    config = electionconfig.Config(
        lock,
        lease_duration=lease_seconds,
        renew_deadline=max(lease_seconds * 2 // 3, 2 * RETRY_SECONDS),
        retry_period=RETRY_SECONDS,
        onstarted_leading=won.set,
        onstopped_leading=lost,
    )
    # The client logs every attempt at INFO; what matters is logged here.
    logging.getLogger("leaderelection").setLevel(logging.WARNING)
    election = leaderelection.LeaderElection(config)
    threading.Thread(target=election.run, name="kubetune-leader", daemon=True).start()
    log.info("candidate %s for the Lease %s/%s", lock.identity, namespace, name)
    with _Liveness(liveness_port):
        won.wait()
    log.info("%s leads: starting the operator", lock.identity)
    return Leadership(lock)


def _exit_now() -> None:
    logging.shutdown()
    os._exit(1)


class _Liveness:
    """Answers the liveness probe while this replica waits (kopf serves it once it runs)."""

    def __init__(self, port: int | None) -> None:
        self._server: http.server.ThreadingHTTPServer | None = None
        if port is not None:
            self._server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Healthy)

    def __enter__(self) -> _Liveness:
        if self._server is not None:
            threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"waitingForLease": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # probes every few seconds are not news
