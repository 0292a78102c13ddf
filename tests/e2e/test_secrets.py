"""No storage password, and no value of a team's own Secret given to the runners through the pod
template's ``envFrom``, in anything the cluster shows: pod specs, events, statuses, ConfigMaps,
the operator's log or the runners' logs.

The storage Secret holds a URL whose password is random and unlike any other text of the
cluster. A study runs to its end with it, and two studies fail to reach their storage (a
database that does not exist, a URL kubetune cannot read), so errors about the URL are
written too. Then every pod (every version seen while the study ran, and what is left),
workload, event, HPOStudy (status included) and ConfigMap of every namespace, and every
container log the node wrote (kept as it was written: the kubelet deletes a pod's logs with
the pod), are searched for the password as written, percent-encoded and
JSON-escaped (``tests.harness.helpers.secret_leaks``, whose unit test shows it finds a planted one).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import secret_leaks, wait_until
from tests.harness.node_fixtures import (
    Database,
    LogKeeper,
    Operator,
    PodWatch,
    create_database,
    on_node,
    restricted_namespace,
)
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.real_node import RealNode
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

#: Characters a URL must encode, so both spellings are searched for.
PASSWORD = f"kt-{secrets.token_hex(12)}/+"
#: A team's own credential, given to the runners by the pod template's envFrom.
TEAM_TOKEN = f"team-{secrets.token_hex(12)}"
#: What the cluster holds, searched in every namespace.
KINDS = ("pods", "deployments", "replicasets", "jobs", "events", "configmaps", "hpostudies")


@pytest.fixture(scope="module")
def database(postgresql_proc: Any, real_node: RealNode) -> Iterator[Database]:
    with create_database(postgresql_proc, real_node, password=PASSWORD) as created:
        yield created


def _study(name: str, image: str, secret: str | None = None) -> dict[str, Any]:
    study = on_node(small_cpu_study(name, max_trials=4), image)
    if secret is not None:
        study["spec"]["storage"] = {"secretRef": {"name": secret, "key": "url"}}
    study["spec"]["runner"] = {
        "template": {
            "spec": {
                "containers": [
                    {"name": "runner", "envFrom": [{"secretRef": {"name": "team-credentials"}}]}
                ]
            }
        }
    }
    return study


def test_no_storage_password_in_pods_events_statuses_configmaps_or_logs(
    control_plane: ControlPlane,
    chart_operator: Operator,
    database: Database,
    test_images: BuiltImages,
) -> None:
    namespace = restricted_namespace(control_plane, "e2e-secrets")
    studies = StudyClient(control_plane, namespace)
    server = database.pod_url.rsplit("/", 1)[0]
    urls = {
        "kubetune-postgres": database.pod_url,  # the chart's default Secret
        "no-database": f"{server}/kt_no_such_database",
        "unreadable": database.pod_url.replace("postgresql://", "postgresql:/", 1),
    }
    for secret, url in urls.items():
        studies.kubectl("create", "secret", "generic", secret, f"--from-literal=url={url}")
    studies.kubectl(
        "create", "secret", "generic", "team-credentials", f"--from-literal=TEAM_TOKEN={TEAM_TOKEN}"
    )
    watch = PodWatch(control_plane, namespace, "finishes")
    keeper = LogKeeper(chart_operator.node)
    try:
        studies.apply(_study("finishes", test_images.image))
        studies.apply(_study("no-database", test_images.image, "no-database"))
        studies.apply(_study("unreadable", test_images.image, "unreadable"))
        for name in ("no-database", "unreadable"):
            studies.wait_condition(name, "Ready", "False", 180, reason="StorageUnavailable")
        studies.wait_condition("finishes", "Succeeded", "True", 900, reason="BudgetSpent")
        wait_until(lambda: not studies.pods("finishes"), 120, "runner pods gone")
    finally:
        watch.close()
        logs = keeper.close()
    try:
        sources = {
            kind: control_plane.kubectl("get", kind, "-A", "-o", "json").stdout for kind in KINDS
        }
        sources["pods seen while the study ran"] = json.dumps([pod for _, _, pod in watch.events])
        sources["operator log"] = chart_operator.logs()
        sources.update(logs)
        runner_logs = "".join(t for p, t in logs.items() if p.startswith(f"{namespace}_finishes"))
        # The search covered what it is about: runners that ran, the storage errors, the
        # study's ConfigMaps, the operator's words about each study.
        assert watch.names(), "no runner pod was seen"
        assert "trial" in runner_logs, sorted(logs)
        assert sources["hpostudies"].count("StorageUnavailable") >= 2
        assert "StorageUnavailable" in sources["events"]
        assert "finishes-best" in sources["configmaps"]
        assert all(name in sources["operator log"] for name in ("finishes", "unreadable"))
        # The team's Secret reached the runners by reference only.
        assert "team-credentials" in sources["pods seen while the study ran"]
        leaks = secret_leaks(PASSWORD, sources) + secret_leaks(TEAM_TOKEN, sources)
        assert not leaks, "\n".join(leaks)
    finally:
        studies.kubectl("delete", "hpostudies", "--all", "--timeout=120s", check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
