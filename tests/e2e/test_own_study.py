"""A team's own study on the real node, as ``examples/own-task`` and the README describe it.

The team's image is built ``FROM`` the kubetune image by the same registry-free build
(``hack/image/build.sh --user-image examples/own-task``) and imported into the node. Its data
set is a file on a local PersistentVolume bound to the claim the study mounts; its access token
is a Secret the pod template gives the runners through ``envFrom``; two DataLoader workers pass
batches of 48 MiB through ``/dev/shm`` (more than a container's default 64 MiB holds in flight).
And code without a new image: a task module from a ConfigMap on the runner's ``PYTHONPATH``,
the way the hung-trial test brings its task whose step never returns.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from kubetune_api.contract import (
    FAILED_ATTR,
    PREEMPTED_ATTR,
    TELEMETRY_ATTR,
    TRIAL_LIMIT_GRACE_ENV,
)
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import REPO_ROOT, secret_leaks, unavailable, wait_until
from tests.harness.node_fixtures import (
    Database,
    LogKeeper,
    Operator,
    PodWatch,
    assert_exact_budget,
    on_node,
)
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.real_node import RealNode
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

EXAMPLE = REPO_ROOT / "examples" / "own-task"
#: 1 MiB samples (256 channels x 1024 float32) in batches of 48 (the study's only batch size).
SAMPLES, CHANNELS, LENGTH = 96, 256, 1024
STUDY_TIMEOUT = 900.0
TOKEN = f"ds-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def own_image(real_node: RealNode, test_images: BuiltImages) -> str:
    """The example's image, built FROM the test image and imported into the node."""
    build = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "image" / "build.sh"), "--user-image", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if build.returncode != 0:
        unavailable(f"the example's image did not build:\n{build.stderr[-3000:]}")
    image, archive = build.stdout.split()
    real_node.import_image(Path(archive))
    return image


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The local volume's directory, readable by the runners' uid, with the data set in it."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from spectra import SpectraFiles
    finally:
        sys.path.remove(str(EXAMPLE))
    path = Path(tempfile.mkdtemp(prefix="kubetune-e2e-spectra-", dir="/tmp"))
    try:
        path.chmod(0o755)
        SpectraFiles(path).write(SAMPLES, CHANNELS, LENGTH, classes=4, token=TOKEN)
        for file in path.iterdir():
            file.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _local_volume(name: str, path: Path, node: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "local": {"path": str(path)},
            "claimRef": {"namespace": namespace, "name": "spectra-data"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def test_a_teams_own_image_data_secret_and_loader_workers_run_to_succeeded(
    control_plane: ControlPlane,
    node_studies: StudyClient,
    chart_operator: Operator,
    node_database: Database,
    own_image: str,
    data_dir: Path,
) -> None:
    namespace = node_studies.namespace
    volume = f"{namespace}-spectra"
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study["spec"]["task"]["image"] = own_image
    name = study["metadata"]["name"]
    budget = study["spec"]["budget"]["maxTrials"]
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(_local_volume(volume, data_dir, chart_operator.node.name, namespace)),
    )
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "spectra-data", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    node_studies.apply(claim)
    node_studies.kubectl(
        "create",
        "secret",
        "generic",
        "spectra-credentials",
        f"--from-literal=DATASET_TOKEN={TOKEN}",
    )
    watch = PodWatch(node_studies.plane, namespace, name)
    keeper = LogKeeper(chart_operator.node)
    try:
        node_studies.apply(study)
        node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
        wait_until(lambda: not node_studies.pods(name), 120, "runner pods gone")
    finally:
        watch.close()
        logs = keeper.close()
        control_plane.kubectl("delete", "pv", volume, "--wait=false", check=False)
    assert_exact_budget(node_database, node_studies, name, budget)
    status = (node_studies.study(name) or {})["status"]
    assert status["trials"]["failed"] == 0, status
    best = node_studies.configmap(f"{name}-best")
    assert best is not None and best["trial"] == str(status["best"]["trial"])
    # The runners ran the team's image with its claim, its Secret and a sized /dev/shm.
    pods = [pod for _, _, pod in watch.events if pod["metadata"]["name"].startswith(name)]
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert pod["metadata"]["labels"]["team"] == "vision"
        assert spec["containers"][0]["image"] == own_image
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "spectra-data"
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "576Mi"}
        assert spec["containers"][0]["envFrom"] == [{"secretRef": {"name": "spectra-credentials"}}]
    runner_logs = "".join(
        text for path, text in logs.items() if f"{namespace}_{name}-runner" in path
    )
    assert "trial" in runner_logs, sorted(logs)
    sources = {
        kind: control_plane.kubectl("get", kind, "-n", namespace, "-o", "json").stdout
        for kind in ("pods", "events", "configmaps", "hpostudies")
    }
    sources["pods seen"] = json.dumps(pods)
    sources["operator log"] = chart_operator.logs()
    sources.update(logs)
    leaks = secret_leaks(TOKEN, sources)
    assert not leaks, "\n".join(leaks)
    # Batches came through the DataLoader's workers (the data set stayed on the claim), and
    # the task, which refuses data without its token, trained on it.
    storage = optuna.load_study(study_name=f"{namespace}.{name}", storage=node_database.url)
    for trial in storage.trials:
        telemetry = trial.user_attrs[TELEMETRY_ATTR]
        assert telemetry["data_on_device"] is False, telemetry
        assert telemetry["micro_batch"] * telemetry["accumulation_steps"] == 48, telemetry


#: A task module as a team might keep in a ConfigMap: plain Python on top of kubetune's image.
CONFIGMAP_TASK = '''
from trial_runner.tasks.digits import DigitsMLP


class SmallDigits(DigitsMLP):
    """kubetune's digits task, on the first 600 images only."""

    def load_data(self):
        data = super().load_data()
        data.inputs, data.targets = data.inputs[:600], data.targets[:600]
        return data
'''


def test_a_task_module_from_a_configmap_runs_on_kubetunes_image(
    node_studies: StudyClient,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    """Code without a new image: the module from a ConfigMap volume on the runner's path."""
    node_studies.kubectl(
        "create", "configmap", "team-task", "--from-literal", f"smalldigits.py={CONFIGMAP_TASK}"
    )
    study = small_cpu_study("from-configmap", max_trials=2, parallelism=1, epochs=1)
    on_node(study, test_images.image)
    study["spec"]["task"]["entrypoint"] = "smalldigits:SmallDigits"
    study["spec"]["runner"] = {
        "template": {
            "spec": {
                "volumes": [{"name": "task", "configMap": {"name": "team-task"}}],
                "containers": [
                    {
                        "name": "runner",
                        "env": [{"name": "PYTHONPATH", "value": "/opt/task"}],
                        "volumeMounts": [
                            {"name": "task", "mountPath": "/opt/task", "readOnly": True}
                        ],
                    }
                ],
            }
        }
    }
    node_studies.apply(study)
    node_studies.wait_condition(
        "from-configmap", "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent"
    )
    assert_exact_budget(node_database, node_studies, "from-configmap", 2)
    storage = optuna.load_study(
        study_name=f"{node_studies.namespace}.from-configmap", storage=node_database.url
    )
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in storage.trials)


def test_a_hung_trial_ends_on_the_node_and_its_runner_goes_on_in_the_same_pod(
    node_studies: StudyClient,
    node_database: Database,
    test_images: BuiltImages,
) -> None:
    """A trial whose step blocks for ever (``threading.Event().wait()``) in a runner pod of one
    process: it ends ``Stalled`` within its limit, the process replaces itself in place (no
    pod is re-created), and the study finishes its exact budget."""
    hanging = (REPO_ROOT / "tests" / "integration" / "hang_tasks.py").read_text()
    node_studies.kubectl(
        "create", "configmap", "hang-task", "--from-literal", f"hang_tasks.py={hanging}"
    )
    name = "hangs"
    study = on_node(small_cpu_study(name, max_trials=3, parallelism=1, epochs=1), test_images.image)
    spec = study["spec"]
    spec["task"]["entrypoint"] = "hang_tasks:HangingMLP"
    # The pod's /tmp survives the in-place replacement: the trial that hung is not picked again.
    spec["task"]["config"] = {"markers": "/tmp", "picks": 1, "hang_at_step": 3}
    spec["budget"].update(stallTimeout="10s", maxFailedTrials=3)
    spec["runner"] = {
        "template": {
            "spec": {
                "volumes": [{"name": "task", "configMap": {"name": "hang-task"}}],
                "containers": [
                    {
                        "name": "runner",
                        "env": [
                            {"name": "PYTHONPATH", "value": "/opt/task"},
                            {"name": TRIAL_LIMIT_GRACE_ENV, "value": "5"},
                        ],
                        "volumeMounts": [{"name": "task", "mountPath": "/opt/task"}],
                    }
                ],
            }
        }
    }
    watch = PodWatch(node_studies.plane, node_studies.namespace, name)
    try:
        node_studies.apply(study)
        node_studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT, reason="BudgetSpent")
    finally:
        watch.close()
    assert watch.names() == {f"{name}-runner-0"}, watch.names()  # never re-created
    storage = optuna.load_study(
        study_name=f"{node_studies.namespace}.{name}", storage=node_database.url
    )
    failed = [t for t in storage.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs.get(FAILED_ATTR) for t in failed] == ["Stalled"], storage.trials
    assert all(PREEMPTED_ATTR not in t.user_attrs for t in storage.trials)
    assert failed[0].datetime_complete is not None and failed[0].datetime_start is not None
    # 10 s without a step, then at most the 5 s grace and the storage write.
    assert (failed[0].datetime_complete - failed[0].datetime_start).total_seconds() < 60
    assert_exact_budget(node_database, node_studies, name, 3)
    status = (node_studies.study(name) or {})["status"]
    assert status["trials"]["failed"] == 1, status
