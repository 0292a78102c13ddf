"""Operator failover on the real node: the chart with two operator replicas (one active, holding
the leader-election Lease), the active one killed with SIGKILL mid-study. The other replica
takes over, no runner pod is duplicated, the status goes on from where it was, and the study
ends with exactly its budget.

Takeover time is measured here (printed with ``pytest -s``; the README quotes it): from the
SIGKILL to the new holder of the Lease, and to the new leader's first action on the study (its
runner pods, deleted at the same moment, created again).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until
from tests.harness.node_fixtures import (
    Database,
    Operator,
    PodWatch,
    assert_exact_budget,
    install_chart_operator,
    on_node,
    study_namespace,
)
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.real_node import RealNode
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

k8s: Any = kubernetes
LEASE_SECONDS = 10
STUDY_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def two_operators(
    control_plane: ControlPlane,
    real_node: RealNode,
    test_images: BuiltImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    values = {
        "operator": {
            "reconcileInterval": 2,
            "logLevel": "verbose",
            "replicas": 2,
            "leaderElection": {"enabled": True, "leaseDurationSeconds": LEASE_SECONDS},
        }
    }
    with install_chart_operator(
        control_plane, real_node, test_images.image, tmp_path_factory.mktemp("ha"), values
    ) as operator:
        yield operator


@pytest.fixture
def studies(
    control_plane: ControlPlane, two_operators: Operator, node_database: Database
) -> Iterator[StudyClient]:
    with study_namespace(control_plane, node_database, "e2e-failover") as client:
        yield client


def _holder(operator: Operator) -> str:
    lease = json.loads(
        operator.plane.kubectl(
            "get", "lease", f"{operator.release}-kubetune-operator", "-n", operator.namespace,
            "-o", "json", check=False,
        ).stdout or "{}"
    )  # fmt: skip
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _pod_of(holder: str) -> str:
    """The pod of a Lease holder (its identity is ``<pod>_<suffix>``)."""
    return holder.rsplit("_", 1)[0]


def _operator_pids(node: RealNode, pod: str) -> list[int]:
    """Host PIDs of the operator process of ``pod`` (its environment names the pod)."""
    pids = []
    for pid in node.container_processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpo_operator" in cmdline and f"POD_ID={pod}".encode() in environ:
            pids.append(pid)
    return pids


def _finished_in(status: dict[str, Any]) -> int:
    """Finished trials as a status reports them."""
    trials = status.get("trials") or {}
    return int(trials.get("complete", 0)) + int(trials.get("pruned", 0))


def _reported(studies: StudyClient, name: str) -> int:
    return _finished_in((studies.study(name) or {}).get("status") or {})


def _alive_runners(events: list[tuple[float, str, dict[str, Any]]]) -> int:
    """The most runner pods that existed (not being deleted, not finished) at one time."""
    alive: dict[str, str] = {}
    most = 0
    for _, kind, pod in events:
        meta, phase = pod["metadata"], (pod.get("status") or {}).get("phase")
        gone = (
            kind == "DELETED" or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed")
        )
        if gone:
            alive.pop(meta["uid"], None)
        else:
            alive[meta["uid"]] = meta["name"]
        most = max(most, len(alive))
    return most


def _diagnose(studies: StudyClient, operator: Operator, name: str) -> str:
    """The study, its pods and events, and what the runners and the operators logged."""
    runners = operator.node.pod_log(studies.namespace, f"{name}-runner-*")
    return "\n".join([studies.diagnose(), runners[-6000:], operator.logs()[-4000:]])


def test_killing_the_active_operator_hands_the_study_to_the_other_replica(
    studies: StudyClient,
    two_operators: Operator,
    node_database: Database,
    real_node: RealNode,
    test_images: BuiltImages,
) -> None:
    operator, name, budget = two_operators, "failover", 10
    assert len(operator.pods()) == 2
    leader = wait_until(lambda: _holder(operator), 60, "a leader")
    leader_pod = _pod_of(leader)
    other_pod = next(p["metadata"]["name"] for p in operator.pods()
                     if p["metadata"]["name"] != leader_pod)  # fmt: skip
    watch = PodWatch(studies.plane, studies.namespace, name)
    try:
        studies.apply(
            on_node(small_cpu_study(name, max_trials=budget, epochs=30), test_images.image)
        )
        wait_until(
            lambda: (
                _reported(studies, name) >= 1
                and sum(p["status"].get("phase") == "Running" for p in studies.pods(name)) == 2
            ),
            STUDY_TIMEOUT,
            "a finished trial with two runners running",
            diagnose=lambda: _diagnose(studies, operator, name),
        )
        status_before = (studies.study(name) or {})["status"]
        runners = studies.pods(name)
        runner0 = next(p for p in runners if p["metadata"]["name"].endswith("-0"))

        pids = _operator_pids(real_node, leader_pod)
        assert pids, f"no operator process of {leader_pod} on the node"
        killed_at = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        # Only an operator that acts brings the runners back, and nothing runs the study
        # meanwhile, however fast its trials (their trials are preempted and resumed later).
        studies.kubectl("delete", "pod", *(p["metadata"]["name"] for p in runners), "--wait=false")

        new_holder = wait_until(
            lambda: (h := _holder(operator)) and h != leader and h,
            120,
            "another replica to take the Lease",
            diagnose=lambda: operator.logs()[-4000:],
        )
        lease_taken = time.monotonic() - killed_at
        assert _pod_of(new_holder) == other_pod, (new_holder, other_pod)

        def replaced() -> bool:
            return any(
                p["metadata"]["name"] == runner0["metadata"]["name"]
                and p["metadata"]["uid"] != runner0["metadata"]["uid"]
                for p in studies.pods(name)
            )

        wait_until(replaced, 120, "the new leader to create runner-0 again",
                   diagnose=studies.diagnose)  # fmt: skip
        acted = time.monotonic() - killed_at
        print(
            f"\n[measure] failover: Lease taken {lease_taken:.1f}s after SIGKILL of the leader, "
            f"first action on the study {acted:.1f}s after (lease duration {LEASE_SECONDS}s)"
        )

        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
        assert_exact_budget(node_database, studies, name, budget)
        # The status went on from where it was: the same start, no count went back.
        status = (studies.study(name) or {})["status"]
        assert status["startTime"] == status_before["startTime"]
        assert _finished_in(status) >= _finished_in(status_before)
        assert status["trialsSummary"] == f"{budget}/{budget}"
    finally:
        watch.close()
    names = watch.names()
    assert names <= {f"{name}-runner-0", f"{name}-runner-1"}, names
    assert _alive_runners(watch.events) <= 2, "two operators acted at once"
    # The killed replica came back as a candidate, not as a second leader.
    assert _holder(operator) == new_holder
