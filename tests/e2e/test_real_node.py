"""The real-node tier: kubetune as users run it, in real containers on a real kubelet.

The Helm chart installs the operator as a container of the image built from this checkout
(``hack/image/build.sh``), logged in with its in-cluster ServiceAccount, in a namespace that
enforces the ``restricted`` Pod Security Standard. Studies are applied with ``kubectl``; their
estimate and runner pods are containers that containerd runs with runc on the node of
:mod:`tests.harness.real_node`, with real memory limits (cgroups), a read-only root filesystem, a
non-root uid, and SIGTERM then SIGKILL when a pod is deleted. They reach this machine's
PostgreSQL through the node's gateway address.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from kubetune_api.spec import study_from_mapping
from kubetune_study.constraints import feasible
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until
from tests.harness.node_fixtures import (
    GRACE_PERIOD,
    NODE_TOLERATION,
    Database,
    Operator,
    PodWatch,
    assert_exact_budget,
    describe_namespace,
    on_node,
    restricted_namespace,
    trial_counts,
)
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.real_node import RealNode
from tests.harness.studies import load_example, small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

RUNNER_UID = 65532
# The example as written: 24 trials of 3 folds in two runner containers on 2 shared cores.
EXAMPLE_TIMEOUT = 1200.0
STUDY_TIMEOUT = 600.0


# --------------------------------------------------------------------------- the tier


def test_node_runs_the_image_non_root_with_a_read_only_root(
    control_plane: ControlPlane, real_node: RealNode, test_images: BuiltImages
) -> None:
    """A bare pod of the image: uid 65532, `/` read-only, `/tmp` writable, exit code and
    termination message reported by the kubelet."""
    namespace = restricted_namespace(control_plane, "e2e-node-pod")
    script = (
        "import os, sys\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "try:\n"
        "    open('/kubetune-probe', 'w')\n"
        "    print('root writable')\n"
        "except OSError as e:\n"
        "    print('root', e.strerror)\n"
        "open('/tmp/probe', 'w').write('ok')\n"
        "import torch, optuna, hpo_operator, trial_runner\n"
        "print('imports ok', torch.__version__)\n"
        "open('/dev/termination-log', 'w').write('done')\n"
        "sys.exit(3)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [NODE_TOLERATION],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": test_images.image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", script],
                    "resources": {"limits": {"memory": "1Gi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    try:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))

        def finished() -> dict[str, Any] | None:
            got = json.loads(
                control_plane.kubectl("get", "pod", "probe", "-n", namespace, "-o", "json").stdout
            )
            return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

        done = wait_until(
            finished,
            180,
            "the probe pod to finish",
            diagnose=lambda: describe_namespace(control_plane, namespace, real_node),
        )
        assert done["spec"]["nodeName"] == real_node.name
        (status,) = done["status"]["containerStatuses"]
        terminated = status["state"]["terminated"]
        assert terminated["exitCode"] == 3, terminated
        assert terminated["message"] == "done"
        log = real_node.pod_log(namespace, "probe")
        assert f"uid {RUNNER_UID} {RUNNER_UID}" in log, log
        assert "root Read-only file system" in log, log
        assert "imports ok" in log, log
        # The API server reaches the kubelet (through the egress proxy) for the same log.
        via_api = control_plane.kubectl("logs", "probe", "-n", namespace).stdout
        assert "imports ok" in via_api
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_operator_container_runs_with_its_service_account_in_a_restricted_namespace(
    control_plane: ControlPlane, chart_operator: Operator, test_images: BuiltImages
) -> None:
    pod = chart_operator.pod()
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == test_images.image
    assert spec["nodeName"] == chart_operator.node.name
    assert spec["serviceAccountName"].endswith("-kubetune")
    labels = json.loads(
        control_plane.kubectl("get", "namespace", chart_operator.namespace, "-o", "json").stdout
    )["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # It logged in in-cluster: kopf found the service account's token and the API server.
    # It logged in in-cluster (the projected token, the `kubernetes` Service through
    # kube-proxy) and watches node_studies; a refused request would be logged.
    log = wait_until(chart_operator.logs, 60, "the operator's log")
    assert "Traceback" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def test_cpu_example_finishes_in_real_containers(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    """``kubectl apply -f examples/digits-cpu.yaml`` with the image set to the built one."""
    example = on_node(load_example("digits-cpu.yaml"), test_images.image)
    name = example["metadata"]["name"]
    budget = example["spec"]["budget"]["maxTrials"]
    node = chart_operator.node
    watch = PodWatch(node_studies.plane, node_studies.namespace, name)
    try:
        node_studies.apply(example)
        running = wait_until(
            lambda: [p for p in node_studies.pods(name) if p["status"].get("phase") == "Running"],
            300,
            "a running runner container",
            diagnose=node_studies.diagnose,
        )
        assert all(p["spec"]["nodeName"] == node.name for p in running)
        _assert_confined(node)
        node_studies.wait_condition(
            name, "Succeeded", "True", EXAMPLE_TIMEOUT, reason="BudgetSpent"
        )
        wait_until(lambda: not node_studies.pods(name), 120, "runner pods gone")
    finally:
        watch.close()
    # The estimate pod and the runners ran as containers, on the real node.
    seen = {pod["metadata"]["name"]: pod for _, _, pod in watch.events}
    assert f"{name}-estimate" not in seen or seen[f"{name}-estimate"]["spec"]["nodeName"]
    runners = [n for n in seen if n.startswith(f"{name}-runner-")]
    assert runners, seen.keys()
    for pod_name in runners:
        terminated = watch.terminated(pod_name)
        assert terminated is not None and terminated["exitCode"] == 0, (pod_name, terminated)
    status = (node_studies.study(name) or {})["status"]
    assert status["trialsSummary"] == f"{budget}/{budget}"
    best = node_studies.configmap(f"{name}-best")
    assert best is not None and best["trial"] == str(status["best"]["trial"])
    assert float(status["best"]["value"]) > 0.5
    assert_exact_budget(node_database, node_studies, name, budget)


def test_conditional_example_finishes_in_real_containers(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    """``kubectl apply -f examples/digits-conditional.yaml`` (image set to the built one, six
    trials): the runners sample its conditional space under its constraint; every trial holds
    only its active parameters; the status says which sampler Auto chose and counts the
    infeasible trials; the best is feasible."""
    example = on_node(load_example("digits-conditional.yaml"), test_images.image)
    example["spec"]["budget"]["maxTrials"] = budget = 6
    name = example["metadata"]["name"]
    node_studies.apply(example)
    node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    status = (node_studies.study(name) or {})["status"]
    assert status["sampler"]["type"] == "TPE", status
    assert "conditional" in status["sampler"]["reason"]
    spec = study_from_mapping(example).spec
    trials = _optuna_study(node_database, node_studies, name).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == budget
    for trial in complete:
        assert trial.params == spec.active_params(trial.params), trial.params
    infeasible = sum(not feasible(t) for t in complete)
    assert status["trials"]["infeasible"] == infeasible
    best = node_studies.configmap(f"{name}-best")
    assert best is not None and best["trial"] == str(status["best"]["trial"])
    best_trial = next(t for t in complete if t.number == int(status["best"]["trial"]))
    assert feasible(best_trial)
    assert set(status["best"]["params"]) == set(best_trial.params)
    assert_exact_budget(node_database, node_studies, name, budget)


def _assert_confined(node: RealNode) -> None:
    """Every container process runs as a non-root uid, with `/` read-only and `/tmp` not."""
    pids = wait_until(node.container_processes, 60, "container processes")
    checked = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm == "pause":
                continue  # the sandbox's, not ours
            if comm.startswith("runc"):
                # runc's init (``runc:[2:INIT]``) of a container being started: it joins the
                # pod's cgroup as root and becomes the container's process when it execs.
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
            assert uids is not None
            assert all(int(u) != 0 for u in uids.group(1).split()), (pid, uids.group(1))
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            options = {line.split()[4]: line.split()[5].split(",") for line in mounts}
            assert "ro" in options["/"], (pid, options["/"])
            if "/tmp" in options:
                assert "rw" in options["/tmp"], (pid, options["/tmp"])
            checked += 1
    assert checked, "no container process could be inspected"


def test_runners_given_too_little_memory_are_oom_killed_then_resized(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    """The runner's data set alone (about 280 MB) is more than the 256Mi the spec gives it: the
    kernel kills the runner in its cgroup, the operator sees OOMKilled, gives replacements more
    memory, and the study still finishes exactly."""
    name = "oom"
    study = small_cpu_study(name, max_trials=4, parallelism=1, epochs=1)
    on_node(study, test_images.image)
    study["spec"]["task"]["config"] = {"repeat": 600}
    for parameter in study["spec"]["searchSpace"]:
        if parameter["name"] == "batch_size":
            parameter["choices"] = [4096]
    study["spec"]["resources"].update({"accelerator": "CPU", "memory": "256Mi"})
    watch = PodWatch(node_studies.plane, node_studies.namespace, name)
    try:
        node_studies.apply(study)
        node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    finally:
        watch.close()
    reasons = [state.get("reason") for state in watch.terminations().values()]
    oom_killed = [reason for reason in reasons if reason == "OOMKilled"]
    assert oom_killed, f"no runner was OOMKilled: {reasons}"
    limits = {
        pod["metadata"]["uid"]: pod["spec"]["containers"][0]["resources"]["limits"]["memory"]
        for _, _, pod in watch.events
    }
    assert "320Mi" in limits.values()  # the spec's 256Mi and 64Mi of /dev/shm
    assert len(set(limits.values())) > 1, limits  # replacements got more
    events = node_studies.kubectl("get", "events", "--field-selector", "reason=OOMKilled").stdout
    assert "ran out of memory" in events
    assert_exact_budget(node_database, node_studies, name, 4)


def test_deleted_runner_gets_sigterm_releases_its_trial_and_the_budget_stays_exact(
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    name = "sigterm"
    # Trials long enough (tens of seconds) that one is mid-flight when its pod is deleted.
    study = on_node(
        small_cpu_study(name, max_trials=4, parallelism=2, epochs=60), test_images.image
    )
    watch = PodWatch(node_studies.plane, node_studies.namespace, name)
    try:
        node_studies.apply(study)
        victim = f"{name}-runner-0"

        def running_trial() -> bool:
            try:
                counts = trial_counts(node_database, node_studies, name)
            except KeyError:  # the operator has not created the study yet
                return False
            return counts.get("RUNNING", 0) >= 2

        wait_until(running_trial, STUDY_TIMEOUT, "both runners inside a trial",
                   diagnose=node_studies.diagnose)  # fmt: skip
        deleted_at = time.monotonic()
        node_studies.kubectl("delete", "pod", victim, "--wait=false")
        terminated = wait_until(
            lambda: watch.terminated(victim), GRACE_PERIOD + 60, "the deleted runner to stop"
        )
        stopped_after = time.monotonic() - deleted_at
        node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    finally:
        watch.close()
    # SIGTERM, not SIGKILL: the runner released its trial and exited 0 within the grace period.
    assert terminated["exitCode"] == 0, terminated
    assert stopped_after < GRACE_PERIOD, stopped_after
    storage_study = _optuna_study(node_database, node_studies, name)
    retried = [t for t in storage_study.trials if t.system_attrs.get("retry_history")]
    assert retried, "the interrupted trial was not queued again"
    assert_exact_budget(node_database, node_studies, name, 4)


def _optuna_study(database: Database, studies: StudyClient, name: str) -> Any:
    return optuna.load_study(study_name=f"{studies.namespace}.{name}", storage=database.url)
