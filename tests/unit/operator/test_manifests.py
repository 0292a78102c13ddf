"""Pod and ConfigMap manifests the operator creates."""

from __future__ import annotations

import copy
import dataclasses
import json

import yaml
from hpo_operator.config import OperatorConfig
from hpo_operator.manifests import best_configmap, front_configmap, spec_configmap, storage_secret
from hpo_operator.names import runner_index
from hpo_operator.pods import estimate_pod, runner_pod
from hpo_operator.sizing import Peak, SizingDecision

from kubetune_api.spec import study_from_mapping
from kubetune_study.pareto import ParetoPoint, front_document
from tests.unit.operator.data import OWNER, make_spec

MIG = SizingDecision(
    "MIG", "nvidia.com/mig-2g.20gb", "1", 20 * 10**9, 13 * 2**30, Peak(12 * 2**30, "Spec"), "r"
)
CPU = SizingDecision("CPU", "memory", "1Gi", 2**30, 2**30, Peak(2**30, "Memory"), "r")


def _runner(sizing: SizingDecision = MIG, config: OperatorConfig | None = None, **spec: object):
    return runner_pod(
        OWNER, make_spec(**spec), 1, sizing, ("pg", "url"), config or OperatorConfig()
    )


def test_runner_pod_name_labels_and_owner() -> None:
    pod = _runner()
    meta = pod["metadata"]
    assert meta["name"] == "digits-runner-1"
    assert meta["namespace"] == "team-a"
    assert meta["labels"]["app.kubernetes.io/name"] == "kubetune"
    assert meta["labels"]["app.kubernetes.io/component"] == "trial-runner"
    assert meta["labels"]["kubetune.dev/study"] == "digits"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "HPOStudy",
            "name": "digits",
            "uid": "0b5e-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert runner_index("digits", meta["name"]) == 1
    assert runner_index("digits", "digits-estimate") is None


def test_runner_runs_the_study_with_storage_from_the_secret_only() -> None:
    pod = _runner()
    container = pod["spec"]["containers"][0]
    assert container["command"] == [
        *("kubetune", "runner", "--study-name", "team-a.digits"),
        *("--termination-message-path", "/dev/termination-log"),
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_STORAGE_URL"] == {
        "name": "KUBETUNE_STORAGE_URL",
        "valueFrom": {"secretKeyRef": {"name": "pg", "key": "url"}},
    }
    assert env["KUBETUNE_STUDY"]["valueFrom"] == {
        "configMapKeyRef": {"name": "digits-spec", "key": "study.yaml"}
    }
    assert "postgresql://" not in json.dumps(pod)
    assert container["image"] == "img:1"


def test_runner_requests_the_sized_mig_slice_and_tolerates_gpu_taint() -> None:
    pod = _runner(resources={"accelerator": "MIG"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"nvidia.com/mig-2g.20gb": "1"}}
    # Host memory stated in the spec is requested next to the slice, with the default 64Mi
    # of /dev/shm (a process without data-loader workers).
    pod = _runner(resources={"accelerator": "MIG", "memory": "8Gi"})
    assert pod["spec"]["containers"][0]["resources"] == {
        "limits": {"nvidia.com/mig-2g.20gb": "1", "memory": "8256Mi"},
        "requests": {"memory": "8256Mi"},
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]


def test_cpu_runner_gets_memory_requests_and_limits() -> None:
    pod = _runner(CPU, resources={"accelerator": "CPU", "cpu": "500m", "memory": "1Gi"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "1088Mi"},  # 1Gi and 64Mi of /dev/shm
        "limits": {"memory": "1088Mi"},
    }
    assert "tolerations" not in pod["spec"]


def test_a_shared_gpu_runs_several_processes_with_cpu_and_memory_for_each() -> None:
    shared = dataclasses.replace(MIG, trials_per_device=3, packing="63%")
    pod = _runner(shared, resources={"accelerator": "MIG", "cpu": "500m", "memory": "2Gi"})
    container = pod["spec"]["containers"][0]
    assert container["command"] == [
        *("kubetune", "runner", "--study-name", "team-a.digits"),
        *("--termination-message-path", "/dev/termination-log"),
        *("--processes", "3"),
    ]
    # The device once (its processes share it), CPU, host memory and /dev/shm three times.
    assert container["resources"] == {
        "limits": {"nvidia.com/mig-2g.20gb": "1", "memory": "6336Mi"},
        "requests": {"cpu": "1500m", "memory": "6336Mi"},
    }
    assert pod["metadata"]["annotations"]["kubetune.dev/trials-per-device"] == "3"
    whole = _runner(
        dataclasses.replace(MIG, trials_per_device=4),
        resources={"accelerator": "MIG", "cpu": "0.5"},
    )
    assert whole["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "2"}


def test_each_runner_pod_runs_its_share_of_the_trials_at_once() -> None:
    # Three trials at once on two pods of a device that holds two: 2 + 1.
    uneven = dataclasses.replace(MIG, trials_per_device=2, pods=2, trials=3)
    spec = make_spec(resources={"accelerator": "MIG", "cpu": "1", "parallelism": 3})
    first, second = (
        runner_pod(OWNER, spec, i, uneven, ("pg", "url"), OperatorConfig()) for i in range(2)
    )
    assert first["spec"]["containers"][0]["command"][-2:] == ["--processes", "2"]
    assert first["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    assert first["metadata"]["annotations"]["kubetune.dev/trials-per-device"] == "2"
    assert "--processes" not in second["spec"]["containers"][0]["command"]
    assert second["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"
    assert second["metadata"]["annotations"]["kubetune.dev/trials-per-device"] == "1"


def test_cpu_runner_processes_each_get_the_sized_memory() -> None:
    three = dataclasses.replace(CPU, quantity="1536Mi", trials_per_device=3)
    pod = _runner(three, resources={"accelerator": "CPU", "cpu": "1", "trialsPerDevice": 3})
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "3", "memory": "4800Mi"},  # 3 x (1536Mi + 64Mi of /dev/shm)
        "limits": {"memory": "4800Mi"},
    }
    assert pod["spec"]["containers"][0]["command"][-2:] == ["--processes", "3"]


def test_one_process_per_device_runs_the_plain_runner() -> None:
    pod = _runner(CPU, resources={"accelerator": "CPU"})
    assert "--processes" not in pod["spec"]["containers"][0]["command"]
    assert pod["metadata"]["annotations"]["kubetune.dev/trials-per-device"] == "1"


def test_runner_pods_carry_kueue_labels_of_the_queue_and_priority() -> None:
    queued = _runner(CPU, resources={"accelerator": "CPU", "queueName": "team-a-gpus"})
    labels = queued["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    assert "kueue.x-k8s.io/priority-class" not in labels
    # A study labelled as Kueue's users label their jobs: the queue and priority are copied.
    owner = copy.deepcopy(OWNER)
    owner["metadata"]["labels"] = {
        "kueue.x-k8s.io/queue-name": "shared",
        "kueue.x-k8s.io/priority-class": "high",
    }
    spec = make_spec(resources={"accelerator": "CPU"})
    pod = runner_pod(owner, spec, 0, CPU, ("pg", "url"), OperatorConfig())
    assert {k: v for k, v in pod["metadata"]["labels"].items() if k.startswith("kueue")} == {
        "kueue.x-k8s.io/queue-name": "shared",
        "kueue.x-k8s.io/priority-class": "high",
    }
    # spec.resources.queueName wins over the label.
    spec = make_spec(resources={"accelerator": "CPU", "queueName": "mine"})
    pod = runner_pod(owner, spec, 0, CPU, ("pg", "url"), OperatorConfig())
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "mine"
    # No queue: no Kueue labels at all, even with a priority label on the study.
    del owner["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    pod = runner_pod(owner, make_spec(), 0, CPU, ("pg", "url"), OperatorConfig())
    assert not any(k.startswith("kueue") for k in pod["metadata"]["labels"])
    # The operator's default queue (runner.queueName) serves studies that name none.
    default = OperatorConfig(queue_name="everyone")
    pod = runner_pod(owner, make_spec(), 0, CPU, ("pg", "url"), default)
    assert {k: v for k, v in pod["metadata"]["labels"].items() if k.startswith("kueue")} == {
        "kueue.x-k8s.io/queue-name": "everyone",
        "kueue.x-k8s.io/priority-class": "high",
    }
    spec = make_spec(resources={"accelerator": "CPU", "queueName": "mine"})
    pod = runner_pod(owner, spec, 0, CPU, ("pg", "url"), default)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "mine"
    # The estimate pod is never queued: it is short and runs before sizing is known.
    estimate = estimate_pod(owner, make_spec(resources={"queueName": "q"}), "k", OperatorConfig())
    assert not any(k.startswith("kueue") for k in estimate["metadata"]["labels"])


def test_runner_meets_the_restricted_pod_security_standard() -> None:
    pod = _runner()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert isinstance(spec["securityContext"]["runAsUser"], int)
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = spec["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["restartPolicy"] == "Never"


def test_operator_settings_reach_the_pod() -> None:
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_RUNNER_EXTRA_LABELS": "team=vision",
            "KUBETUNE_RUNNER_EXTRA_ENV": "KUBETUNE_HEARTBEAT_INTERVAL=2",
            "KUBETUNE_RUNNER_UID": "1000",
            "KUBETUNE_GRACE_PERIOD": "15",
            "KUBETUNE_RUNNER_IMAGE": "local/kubetune:dev",
        }
    )
    pod = _runner(config=config, task={"entrypoint": "trial_runner.tasks.digits:DigitsMLP"})
    assert pod["metadata"]["labels"]["team"] == "vision"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_HEARTBEAT_INTERVAL"] == "2"
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["terminationGracePeriodSeconds"] == 15
    assert pod["spec"]["containers"][0]["image"] == "local/kubetune:dev"


def test_runner_metrics_port_is_served_declared_and_annotated_for_prometheus() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_RUNNER_METRICS_PORT": "9100"})
    pod = _runner(config=config)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_METRICS_PORT"] == "9100"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"
    assert annotations["prometheus.io/path"] == "/metrics"
    # Without the setting, runners serve nothing and say nothing.
    plain = _runner()
    assert "ports" not in plain["spec"]["containers"][0]
    assert not any(k.startswith("prometheus.io/") for k in plain["metadata"]["annotations"])
    assert "KUBETUNE_METRICS_PORT" not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}


def test_estimate_pod_runs_the_estimate_on_cpu() -> None:
    pod = estimate_pod(OWNER, make_spec(), "abc123", OperatorConfig())
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == "digits-estimate"
    assert container["command"][:3] == ["kubetune", "estimate", "--json"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert pod["metadata"]["annotations"]["kubetune.dev/estimate-key"] == "abc123"
    assert not any(e["name"] == "KUBETUNE_STORAGE_URL" for e in container["env"])


def test_spec_configmap_holds_a_study_document_the_runner_accepts() -> None:
    spec = make_spec()
    cm = spec_configmap(OWNER, spec)
    assert cm["metadata"]["name"] == "digits-spec"
    document = yaml.safe_load(cm["data"]["study.yaml"])
    study = study_from_mapping(document)
    assert study.spec == spec
    assert study.metadata.name == "digits"


def test_best_configmap_has_value_trial_and_params() -> None:
    cm = best_configmap(OWNER, make_spec(), 0.975, {"learning_rate": 0.003, "batch_size": 64}, 7)
    assert cm["metadata"]["name"] == "digits-best"
    data = cm["data"]
    assert json.loads(data["params.json"]) == {"learning_rate": 0.003, "batch_size": 64}
    assert data["batch_size"] == "64"
    assert data["learning_rate"] == "0.003"
    assert (data["value"], data["trial"], data["metric"]) == ("0.975", "7", "accuracy")


def test_default_storage_secret_is_owned_by_the_study() -> None:
    secret = storage_secret(OWNER, "postgresql://u:p@h/db")
    assert secret["metadata"]["name"] == "digits-storage"
    assert secret["stringData"] == {"url": "postgresql://u:p@h/db"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "0b5e-uid"


def test_front_configmap_holds_the_whole_front_as_yaml() -> None:
    spec = make_spec(
        objective=None,
        objectives=[
            {"metric": "accuracy", "direction": "Maximize"},
            {"metric": "parameters", "direction": "Minimize"},
        ],
    )
    front = tuple(
        ParetoPoint(n, (0.99 - n / 100, 1000.0 - n), {"learning_rate": 0.003, "batch_size": 64})
        for n in range(12)
    )
    cm = front_configmap(OWNER, spec, front)
    assert cm["metadata"]["name"] == "digits-best"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "0b5e-uid"
    assert cm["data"]["size"] == "12"
    document = yaml.safe_load(cm["data"]["front.yaml"])
    assert document == front_document(front, spec.all_objectives)  # what results --output has
    assert len(document["trials"]) == 12  # every trial, not the status's ten
    assert document["trials"][0] == {
        "trial": 0,
        "values": {"accuracy": 0.99, "parameters": 1000.0},
        "params": {"learning_rate": 0.003, "batch_size": 64},
    }


def test_a_runner_pod_says_the_kind_of_device_it_was_sized_for() -> None:
    """So that a runner given a GPU it cannot use stops instead of training on the CPU."""
    for sizing, kind in ((MIG, "MIG"), (CPU, "CPU")):
        env = {e["name"]: e.get("value") for e in _runner(sizing)["spec"]["containers"][0]["env"]}
        assert env["KUBETUNE_DEVICE_KIND"] == kind
