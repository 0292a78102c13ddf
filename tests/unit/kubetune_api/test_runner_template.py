"""``spec.runner.template``: the Kubernetes API's own shapes, and nothing of kubetune's part.

Each message names the field; `kubetune validate` and the API server give one verdict (the CRD
is generated from the same models and rules: tests/unit/operator/test_crd.py, and the e2e
agreement property checks it against the real API server).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.spec import SpecError, study_from_mapping
from tests.harness.studies import study_document

PREFIX = "spec.runner.template"


def _errors(template: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        study_from_mapping(study_document(runner={"template": template}))
    return [str(e) for e in info.value.errors]


def _runner(**container: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "runner", **container}]}}


def test_a_template_of_the_users_part_is_accepted() -> None:
    template = {
        "metadata": {"labels": {"team": "vision"}},
        "spec": {
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
                {"name": "code", "configMap": {"name": "my-task"}},
            ],
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "team", "operator": "Exists", "tolerationSeconds": 30}],
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
            "serviceAccountName": "trainer",
            "runtimeClassName": "nvidia",
            "schedulerName": "default-scheduler",
            "securityContext": {"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"},
            "initContainers": [{"name": "fetch", "image": "busybox:1"}],
            "containers": [
                {
                    "name": "runner",
                    "env": [
                        {"name": "DATA_DIR", "value": "/data"},
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}},
                        },
                    ],
                    "envFrom": [{"secretRef": {"name": "wandb"}, "prefix": "WANDB_"}],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data", "readOnly": True},
                        {"name": "code", "mountPath": "/opt/task"},
                    ],
                    "resources": {"limits": {"ephemeral-storage": "10Gi", "example.com/nic": 1}},
                }
            ],
        },
    }
    study = study_from_mapping(study_document(runner={"template": template}))
    assert study.spec.runner.template == template


def test_a_typo_anywhere_in_the_template_is_an_unknown_field() -> None:
    assert _errors(
        {"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"clamName": "x"}}]}}
    ) == [
        f"{PREFIX}.spec.volumes[0].persistentVolumeClaim.claimName: required field is missing",
        # The Kubernetes API's objects name what they accept too, in the API's spelling.
        f"{PREFIX}.spec.volumes[0].persistentVolumeClaim.clamName: unknown field (accepted: "
        "claimName, readOnly)",
    ]
    (error,) = _errors({"spec": {"nodeSelectr": {"a": "b"}}})
    assert error.startswith(f"{PREFIX}.spec.nodeSelectr: unknown field (accepted: affinity")
    (error,) = _errors(_runner(envFrm=[]))
    assert error.startswith(f"{PREFIX}.spec.containers[0].envFrm: unknown field")
    (error,) = _errors({"spec": {"tolerations": [{"key": "a", "tolerationSeconds": "30"}]}})
    assert error.startswith(f"{PREFIX}.spec.tolerations[0].tolerationSeconds: ")


@pytest.mark.parametrize(
    ("template", "path", "words"),
    [
        (_runner(command=["python"]), "spec.containers[0].command", "set by kubetune"),
        (_runner(image="mine:1"), "spec.containers[0].image", "set by kubetune"),
        (_runner(securityContext={}), "spec.containers[0].securityContext", "set by kubetune"),
        ({"spec": {"restartPolicy": "Always"}}, "spec.restartPolicy", "set by kubetune"),
        ({"spec": {"hostNetwork": True}}, "spec.hostNetwork", "set by kubetune"),
        (
            {"spec": {"securityContext": {"runAsUser": 0}}},
            "spec.securityContext.runAsUser",
            "set by kubetune",
        ),
        (
            _runner(env=[{"name": "KUBETUNE_STORAGE_URL", "value": "sqlite://"}]),
            "spec.containers[0].env[0].name",
            "set by kubetune",
        ),
        (
            _runner(resources={"limits": {"memory": "8Gi"}}),
            "spec.containers[0].resources.limits.memory",
            "sized by kubetune",
        ),
        (
            _runner(resources={"requests": {"nvidia.com/gpu": 1}}),
            "spec.containers[0].resources.requests[\"'nvidia.com/gpu'\"]",
            "sized by kubetune",
        ),
        (
            {"metadata": {"labels": {"kubetune.dev/study": "other"}}},
            "metadata.labels[\"'kubetune.dev/study'\"]",
            "set by kubetune",
        ),
        (
            {"metadata": {"annotations": {"prometheus.io/port": "1"}}},
            "metadata.annotations[\"'prometheus.io/port'\"]",
            "set by kubetune",
        ),
        (
            {"spec": {"volumes": [{"name": "dshm", "emptyDir": {}}]}},
            "spec.volumes[0].name",
            "kubetune's own volume",
        ),
        (
            {"spec": {"initContainers": [{"name": "i", "securityContext": {"runAsUser": 0}}]}},
            "spec.initContainers[0].securityContext",
            "restricted security context",
        ),
        (
            {"spec": {"initContainers": [{"name": "runner"}]}},
            "spec.initContainers[0].name",
            "runner container's name",
        ),
        (
            {
                "spec": {
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "containers": [
                        {
                            "name": "runner",
                            "volumeMounts": [{"name": "scratch", "mountPath": "/dev/shm/"}],
                        }
                    ],
                }
            },
            "spec.containers[0].volumeMounts[0].mountPath",
            "mounted by kubetune",
        ),
    ],
)
def test_kubetunes_part_of_the_pod_is_refused_with_the_field_named(
    template: dict[str, Any], path: str, words: str
) -> None:
    (error,) = _errors(template)
    assert error.startswith(f"{PREFIX}.{path.replace(chr(34), '')}: "), error
    assert words in error


def test_mounts_name_volumes_of_the_template_and_names_are_unique() -> None:
    template = {
        "spec": {
            "volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}],
            "containers": [
                {
                    "name": "runner",
                    "volumeMounts": [{"name": "b", "mountPath": "/b"}],
                    "env": [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}],
                }
            ],
        }
    }
    assert _errors(template) == [
        f"{PREFIX}.spec.volumes[1].name: duplicate name 'a'",
        f"{PREFIX}.spec.containers[0].env[1].name: duplicate name 'X'",
        f"{PREFIX}.spec.containers[0].volumeMounts[0].name: no volume 'b' in spec.volumes "
        "(volumes: a)",
    ]


def test_only_the_runner_container_and_bounded_lists() -> None:
    (error,) = _errors({"spec": {"containers": [{"name": "sidecar"}]}})
    assert error.startswith(f"{PREFIX}.spec.containers[0].name: must be one of 'runner'")
    (error,) = _errors({"spec": {"tolerations": [{"key": str(i)} for i in range(65)]}})
    assert error.startswith(f"{PREFIX}.spec.tolerations: ")


def test_shared_memory_is_a_positive_quantity() -> None:
    study = study_from_mapping(study_document(runner={"sharedMemory": "1Gi"}))
    assert study.spec.runner.shared_memory_bytes(4) == 2**30
    assert (
        study_from_mapping(study_document()).spec.runner.shared_memory_bytes(2)
        == (64 + 2 * 256) * 2**20
    )
    for bad in ("0", "lots"):
        with pytest.raises(SpecError) as info:
            study_from_mapping(study_document(runner={"sharedMemory": bad}))
        assert str(info.value.errors[0]).startswith("spec.runner.sharedMemory: ")
