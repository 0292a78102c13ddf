"""Runners that cannot start, on the real node: the reason in the status, in ``kubectl get``
and in an event, and a study Failed with it after a few failed starts.

The chart's operator runs as a container with a short back-off (3 s, doubled; 3 failed starts
in a row fail a study) and runner pods pulled ``IfNotPresent``, so an image the node does not
have is pulled for real, and fails: the node reaches no registry.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from kubetune_api.contract import KIND
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until
from tests.harness.node_fixtures import Operator, install_chart_operator, on_node
from tests.harness.operator_fixtures import StudyClient
from tests.harness.prerequisites import BuiltImages
from tests.harness.real_node import RealNode
from tests.harness.studies import small_cpu_study

pytestmark = [pytest.mark.e2e, pytest.mark.node]

ATTEMPTS = 3
BACKOFF = 3
#: Seconds from the pod saying why to the status saying it: one pass (2 s) and slack for a
#: busy machine (the kubectl polls, the watch's delivery).
ONE_PASS = 8.0


@pytest.fixture(scope="module")
def chart_operator(
    control_plane: ControlPlane,
    real_node: RealNode,
    test_images: BuiltImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The chart's operator with a short start back-off; runner images pulled when missing."""
    values = {
        "operator": {"runnerStartAttempts": ATTEMPTS, "runnerStartBackoff": BACKOFF},
        "runner": {"pullPolicy": "IfNotPresent"},
    }
    with install_chart_operator(
        control_plane, real_node, test_images.image, tmp_path_factory.mktemp("chart"), values
    ) as operator:
        yield operator


def _events(studies: StudyClient, name: str, reason: str) -> list[dict[str, Any]]:
    """The events about HPOStudy ``name`` with ``reason``."""
    listed = studies.kubectl("get", "events", "--field-selector", f"reason={reason}", "-o", "json")
    return [
        e
        for e in json.loads(listed.stdout)["items"]
        if e["involvedObject"].get("kind") == KIND and e["involvedObject"]["name"] == name
    ]


def _first_waiting(studies: StudyClient, name: str, reasons: set[str]) -> float | None:
    """When (monotonic) a runner pod of ``name`` is first seen waiting with one of ``reasons``."""
    for pod in studies.pods(name):
        for status in pod["status"].get("containerStatuses") or []:
            if ((status.get("state") or {}).get("waiting") or {}).get("reason") in reasons:
                return time.monotonic()
    return None


def _assert_shown_within_a_pass(
    studies: StudyClient, name: str, waiting: set[str], reason: str
) -> dict[str, Any]:
    """The pod says why (a waiting reason); the Ready condition says it within a pass."""
    seen = wait_until(
        lambda: _first_waiting(studies, name, waiting),
        120,
        f"a runner pod waiting with {waiting}",
        interval=0.2,
        diagnose=studies.diagnose,
    )
    ready = studies.wait_condition(name, "Ready", "False", ONE_PASS + 60, reason=reason)
    assert time.monotonic() - seen < ONE_PASS, time.monotonic() - seen
    assert studies.columns(name)["STATUS"] == reason
    return ready


def test_an_image_the_node_cannot_pull_is_shown_then_fails_the_study(
    node_studies: StudyClient, chart_operator: Operator, test_images: BuiltImages
) -> None:
    name = "no-image"
    image = f"{test_images.image.rsplit(':', 1)[0]}:no-such-tag"
    study = on_node(small_cpu_study(name, max_trials=2, parallelism=1), image)
    node_studies.apply(study)
    ready = _assert_shown_within_a_pass(
        node_studies, name, {"ErrImagePull", "ImagePullBackOff"}, "ImagePullFailed"
    )
    # The kubelet's words, naming the image.
    assert f"{name}-runner-0 cannot start" in ready["message"] and image in ready["message"]
    assert wait_until(lambda: _events(node_studies, name, "ImagePullFailed"), 30, "the event")
    failed = node_studies.wait_condition(name, "Failed", "True", 240, reason="ImagePullFailed")
    assert f"failed to start {ATTEMPTS} times in a row" in failed["message"]
    assert image in failed["message"]
    status = (node_studies.study(name) or {})["status"]
    assert status["runners"]["startFailure"]["attempts"] == ATTEMPTS
    assert status["runners"]["failedPods"] == 0
    assert wait_until(lambda: _events(node_studies, name, "Failed"), 30, "the Failed event")
    wait_until(lambda: not node_studies.pods(name), 60, "runner pods gone")
    # No churn once Failed: no runner comes back.
    time.sleep(3 * BACKOFF)
    assert not node_studies.pods(name)


def test_an_image_that_appears_later_lets_the_runners_start(
    node_studies: StudyClient,
    chart_operator: Operator,
    test_images: BuiltImages,
    real_node: RealNode,
) -> None:
    name = "late-image"
    image = f"{test_images.image.rsplit(':', 1)[0]}:late-{uuid.uuid4().hex[:6]}"
    study = on_node(small_cpu_study(name, max_trials=2, parallelism=1), image)
    node_studies.apply(study)
    try:
        node_studies.wait_condition(name, "Ready", "False", 120, reason="ImagePullFailed")
        real_node.tag_image(test_images.image, image)  # as a push to the registry would
        node_studies.wait_condition(name, "Succeeded", "True", 300, reason="BudgetSpent")
    finally:
        real_node.remove_image(image)
    status = (node_studies.study(name) or {})["status"]
    assert "startFailure" not in status["runners"]
    assert node_studies.condition(name, "Failed")["status"] == "False"


def test_a_task_that_does_not_load_fails_the_study_with_the_runners_words(
    node_studies: StudyClient, chart_operator: Operator, test_images: BuiltImages
) -> None:
    """One study's task does not import, another's data does not load: both runners exit 5
    with one line, shown as ``TaskLoadFailed`` until the study is Failed with it."""
    missing = on_node(small_cpu_study("no-module", max_trials=2, parallelism=1), test_images.image)
    missing["spec"]["task"]["entrypoint"] = "no_such_module:Task"
    no_data = on_node(small_cpu_study("no-data", max_trials=2, parallelism=1), test_images.image)
    no_data["spec"]["task"]["config"] = {"repeat": "many"}
    node_studies.apply(missing)
    node_studies.apply(no_data)
    said = {
        "no-module": "cannot import module 'no_such_module'",
        "no-data": "loading the task's data raised ValueError: invalid literal for int()",
    }
    for name, words in said.items():
        ready = node_studies.wait_condition(name, "Ready", "False", 120, reason="TaskLoadFailed")
        assert words in ready["message"], ready
        events = wait_until(partial(_events, node_studies, name, "TaskLoadFailed"), 30, "the event")
        assert words in events[0]["message"]
    for name, words in said.items():
        failed = node_studies.wait_condition(name, "Failed", "True", 300, reason="TaskLoadFailed")
        assert words in failed["message"]
        runners = (node_studies.study(name) or {})["status"]["runners"]
        assert runners["startFailure"]["attempts"] == ATTEMPTS and runners["failedPods"] == 0
        assert node_studies.columns(name)["STATUS"] == "TaskLoadFailed"


def _with_template(study: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    study["spec"]["runner"] = {"template": {"spec": pod}}
    return study


def test_a_secret_created_later_lets_the_runners_start(
    node_studies: StudyClient, chart_operator: Operator, test_images: BuiltImages
) -> None:
    """``envFrom`` names a Secret that does not exist yet: ``ConfigMissing`` is shown, and once
    the Secret is created the kubelet starts the runner and the study finishes."""
    name = "late-secret"
    study = on_node(small_cpu_study(name, max_trials=2, parallelism=1, epochs=1), test_images.image)
    _with_template(
        study, {"containers": [{"name": "runner", "envFrom": [{"secretRef": {"name": "wandb"}}]}]}
    )
    node_studies.apply(study)
    ready = _assert_shown_within_a_pass(
        node_studies, name, {"CreateContainerConfigError"}, "ConfigMissing"
    )
    assert 'secret "wandb" not found' in ready["message"], ready
    assert wait_until(lambda: _events(node_studies, name, "ConfigMissing"), 30, "the event")
    node_studies.kubectl("create", "secret", "generic", "wandb", "--from-literal=WANDB_MODE=off")
    node_studies.wait_condition(name, "Succeeded", "True", 300, reason="BudgetSpent")
    assert node_studies.condition(name, "Failed")["status"] == "False"


def test_volumes_that_cannot_mount_fail_the_study_with_the_kubelets_words(
    node_studies: StudyClient, chart_operator: Operator, test_images: BuiltImages
) -> None:
    """A Secret volume whose Secret does not exist (the kubelet says so only in FailedMount
    events) and a claim that does not exist (the scheduler says so): ``VolumeMountFailed``,
    then Failed after the attempts."""
    said = {
        "no-secret-volume": 'secret "no-such-secret" not found',
        "no-claim": 'persistentvolumeclaim "no-such-claim" not found',
    }
    sources = {
        "no-secret-volume": {"secret": {"secretName": "no-such-secret"}},
        "no-claim": {"persistentVolumeClaim": {"claimName": "no-such-claim"}},
    }
    for name, source in sources.items():
        study = on_node(small_cpu_study(name, max_trials=2, parallelism=1), test_images.image)
        mount = {"name": "data", "mountPath": "/data", "readOnly": True}
        pod = {
            "volumes": [{"name": "data", **source}],
            "containers": [{"name": "runner", "volumeMounts": [mount]}],
        }
        node_studies.apply(_with_template(study, pod))
    for name, words in said.items():
        ready = node_studies.wait_condition(name, "Ready", "False", 120, reason="VolumeMountFailed")
        assert words in ready["message"], ready
        events = wait_until(
            partial(_events, node_studies, name, "VolumeMountFailed"), 30, "the event"
        )
        assert words in events[0]["message"]
    for name, words in said.items():
        failed = node_studies.wait_condition(
            name, "Failed", "True", 300, reason="VolumeMountFailed"
        )
        assert words in failed["message"]
        assert node_studies.columns(name)["STATUS"] == "VolumeMountFailed"
