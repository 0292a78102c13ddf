"""``spec.runner``: the template merged into runner and estimate pods, and ``/dev/shm``."""

from __future__ import annotations

import dataclasses
from typing import Any

from hpo_operator.config import OperatorConfig
from hpo_operator.pods import estimate_pod, runner_pod
from hpo_operator.sizing import Peak, SizingDecision

from tests.unit.operator.data import OWNER, make_spec

CPU = SizingDecision("CPU", "memory", "1Gi", 2**30, 2**30, Peak(2**30, "Memory"), "r")
GPU = SizingDecision("GPU", "nvidia.com/gpu", "1", 80 * 10**9, 13 * 2**30, Peak(1, "Spec"), "r")

#: What a team brings: its data on a claim, credentials from a Secret, its nodes and account.
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "vision"}, "annotations": {"cost-center": "42"}},
    "spec": {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
        "initContainers": [
            {"name": "fetch", "image": "busybox:1", "command": ["true"], "securityContext": None}
        ],
        "nodeSelector": {"pool": "training"},
        "tolerations": [{"key": "team", "operator": "Equal", "value": "vision"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "trainer",
        "priorityClassName": "research",
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [3000]},
        "containers": [
            {
                "name": "runner",
                "env": [{"name": "DATA_DIR", "value": "/data"}],
                "envFrom": [{"secretRef": {"name": "wandb"}}],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                "resources": {"limits": {"ephemeral-storage": "10Gi"}},
            }
        ],
    },
}


def _runner(sizing: SizingDecision = CPU, **spec: Any) -> dict[str, Any]:
    return runner_pod(OWNER, make_spec(**spec), 0, sizing, ("pg", "url"), OperatorConfig())


def test_the_template_reaches_runner_pods_beside_kubetunes_part() -> None:
    pod = _runner(runner={"template": TEMPLATE})
    meta, spec = pod["metadata"], pod["spec"]
    (container,) = spec["containers"]
    assert meta["labels"]["team"] == "vision"
    assert meta["labels"]["kubetune.dev/study"] == "digits"
    assert meta["annotations"]["cost-center"] == "42"
    assert meta["annotations"]["kubetune.dev/resource"] == "memory"
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "dshm", "data"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp", "/dev/shm", "/data"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DATA_DIR"]["value"] == "/data"
    assert env["KUBETUNE_STORAGE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "url"}
    assert container["envFrom"] == [{"secretRef": {"name": "wandb"}}]
    assert container["resources"]["limits"]["ephemeral-storage"] == "10Gi"
    assert container["resources"]["limits"]["memory"] == "1088Mi"
    for field in ("nodeSelector", "affinity", "imagePullSecrets", "priorityClassName"):
        assert spec[field] == TEMPLATE["spec"][field]
    assert spec["serviceAccountName"] == "trainer"
    assert {"key": "team", "operator": "Equal", "value": "vision"} in spec["tolerations"]
    # kubetune's own part stays: the command, the restricted security context, the policy.
    assert container["command"][:2] == ["kubetune", "runner"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == 2000
    assert spec["securityContext"]["supplementalGroups"] == [3000]
    assert spec["restartPolicy"] == "Never"
    # Init containers run under the same restricted security context; nulls are dropped as
    # the API server drops them.
    (init,) = spec["initContainers"]
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["command"] == ["true"]


def test_the_estimate_pod_reads_the_same_data_with_the_same_template() -> None:
    pod = estimate_pod(OWNER, make_spec(runner={"template": TEMPLATE}), "k", OperatorConfig())
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "estimate"
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert container["envFrom"] == [{"secretRef": {"name": "wandb"}}]
    assert spec["nodeSelector"] == {"pool": "training"}
    assert spec["serviceAccountName"] == "trainer"
    assert pod["metadata"]["labels"]["kubetune.dev/study"] == "digits"
    # The operator's estimate memory and the estimate process's /dev/shm.
    assert container["resources"]["limits"]["memory"] == "4160Mi"


def test_shared_memory_is_sized_from_the_loader_workers_and_counted_in_memory() -> None:
    def shm(pod: dict[str, Any]) -> dict[str, Any]:
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
        return dict(volume["emptyDir"])

    assert shm(_runner()) == {"medium": "Memory", "sizeLimit": "64Mi"}
    workers = _runner(training={"dataLoaderWorkers": 2})
    assert shm(workers) == {"medium": "Memory", "sizeLimit": "576Mi"}
    assert workers["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1600Mi"
    # Three processes of one pod: each has its workers' batches in the pod's /dev/shm.
    three = _runner(
        dataclasses.replace(CPU, trials_per_device=3), training={"dataLoaderWorkers": 2}
    )
    assert shm(three)["sizeLimit"] == "1728Mi"
    assert three["spec"]["containers"][0]["resources"]["requests"]["memory"] == "4800Mi"
    # Users who know better say so.
    sized = _runner(training={"dataLoaderWorkers": 2}, runner={"sharedMemory": "2Gi"})
    assert shm(sized)["sizeLimit"] == "2Gi"
    assert sized["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"


def test_a_gpu_runner_without_host_memory_gets_shm_but_no_memory_limit() -> None:
    pod = _runner(
        GPU,
        resources={"accelerator": "GPU"},
        training={"dataLoaderWorkers": 1},
    )
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert volume["emptyDir"]["sizeLimit"] == "320Mi"
