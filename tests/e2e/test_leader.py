"""Leader election against the real API server: candidates in this process campaign for one
Lease (:mod:`hpo_operator.leader`). The chart's replicas on the real node, killed for real, are
in ``test_failover_node.py``."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import kubernetes
import pytest
from hpo_operator.leader import RETRY_SECONDS, Leadership, campaign

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until

pytestmark = pytest.mark.e2e

k8s: Any = kubernetes
LEASE = "kubetune-operator"
LEASE_SECONDS = 6


class Candidate:
    """``campaign`` in a thread: ``won`` once it leads, ``lost`` if it loses the Lease."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.leadership: Leadership | None = None
        self.won = threading.Event()
        self.lost = threading.Event()

        def run() -> None:
            self.leadership = campaign(
                client, namespace, LEASE, lease_seconds=LEASE_SECONDS, on_lost=self.lost.set
            )
            self.won.set()

        threading.Thread(target=run, daemon=True).start()


def _holder(client: Any, namespace: str) -> str | None:
    lease = k8s.client.CoordinationV1Api(client).read_namespaced_lease(LEASE, namespace)
    return lease.spec.holder_identity  # type: ignore[no-any-return]


def test_one_candidate_leads_and_a_handed_back_lease_is_taken_at_once(
    control_plane: ControlPlane, namespace: str
) -> None:
    with control_plane.api_client() as client:
        first = Candidate(client, namespace)
        assert first.won.wait(30), "the first candidate never led"
        assert first.leadership is not None
        second = Candidate(client, namespace)
        # Longer than the Lease: the leader renews it, so the second keeps waiting.
        assert not second.won.wait(LEASE_SECONDS + 2 * RETRY_SECONDS)
        assert _holder(client, namespace) == first.leadership.holder

        handed_back = time.monotonic()
        first.leadership.release()
        assert second.won.wait(3 * RETRY_SECONDS), "the handed-back Lease was not taken"
        print(f"\n[measure] handover after a graceful stop: {time.monotonic() - handed_back:.1f}s")
        assert second.leadership is not None
        assert _holder(client, namespace) == second.leadership.holder
        assert not first.lost.is_set() and not second.lost.is_set()
        second.leadership.release()


def test_a_leader_that_cannot_renew_its_lease_stops(
    control_plane: ControlPlane, namespace: str
) -> None:
    with control_plane.api_client() as client:
        leader = Candidate(client, namespace)
        assert leader.won.wait(30)
        # Someone else holds the Lease now (as after a partition, when it expired unrenewed).
        api = k8s.client.CoordinationV1Api(client)

        def taken_over() -> bool:
            lease = api.read_namespaced_lease(LEASE, namespace)
            lease.spec.holder_identity = "another-replica"
            try:
                api.replace_namespaced_lease(LEASE, namespace, lease)
            except k8s.client.exceptions.ApiException as error:
                if error.status == 409:  # the leader renewed since the read: read it again
                    return False
                raise
            return True

        wait_until(taken_over, 10, "the Lease replaced")
        # Within the renew deadline, before the Lease could pass to anyone else.
        assert leader.lost.wait(LEASE_SECONDS + RETRY_SECONDS), "the leader did not stop"
        wait_until(lambda: _holder(client, namespace) == "another-replica", 5, "the new holder")


def test_a_lease_whose_holder_stopped_renewing_is_taken_once_it_expires(
    control_plane: ControlPlane, namespace: str
) -> None:
    """What a SIGKILLed leader leaves: a Lease renewed a moment ago and never again."""
    with control_plane.api_client() as client:
        api = k8s.client.CoordinationV1Api(client)
        last_renewal = dt.datetime.now(dt.UTC)
        spec = {
            "holderIdentity": "killed-replica",
            "leaseDurationSeconds": LEASE_SECONDS,
            "acquireTime": last_renewal.isoformat(),
            "renewTime": last_renewal.isoformat(),
        }
        api.create_namespaced_lease(namespace, {"metadata": {"name": LEASE}, "spec": spec})
        killed_at = time.monotonic()
        candidate = Candidate(client, namespace)
        # Not before the Lease has expired: its holder might still be alive.
        assert not candidate.won.wait(LEASE_SECONDS / 2), "took a Lease that had not expired"
        assert candidate.won.wait(2 * LEASE_SECONDS + 2 * RETRY_SECONDS), "never took over"
        print(
            f"\n[measure] takeover of a Lease whose holder stopped renewing: "
            f"{time.monotonic() - killed_at:.1f}s after its last renewal "
            f"(lease duration {LEASE_SECONDS}s)"
        )
        assert candidate.leadership is not None
        assert _holder(client, namespace) == candidate.leadership.holder
        candidate.leadership.release()
