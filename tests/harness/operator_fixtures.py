"""Helpers for the operator's end-to-end tests: run the operator, apply studies, wait.

The operator runs in this process through ``kopf.testing.KopfRunner`` (kopf's own test tool,
a real ``kopf run`` in a thread) against the control plane of ``tests/e2e/conftest.py``; its
pods land on kwok's simulated nodes. (On the real node the operator runs as a container of the
built image: see ``node_fixtures.py``.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import kubernetes
import optuna
import yaml
from kopf.testing import KopfRunner
from kubernetes.client.exceptions import ApiException

from kubetune_api.contract import (
    COMPONENT_LABEL,
    COMPONENT_RUNNER,
    GROUP,
    PLURAL,
    STUDY_LABEL,
)
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import REPO_ROOT, wait_until

__all__ = [
    "CRD_FILE",
    "CRD_NAME",
    "StudyClient",
    "add_finished_trials",
    "api_requests",
    "delete_studies",
    "exists",
    "finished_trials",
    "fresh_namespace",
    "install_crd",
    "namespace_name",
    "operator_env",
    "run_operator",
    "wait_established",
]

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes
#: The CRD's name, ``<plural>.<group>``.
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = REPO_ROOT / "crds" / "kubetune.dev_hpostudies.yaml"


def install_crd(plane: ControlPlane) -> None:
    """The generated CRD, applied as a user would (server-side), and established."""
    plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    wait_established(plane, CRD_NAME)


def wait_established(plane: ControlPlane, crd: str) -> None:
    """Polled rather than `kubectl wait`, which fails on a CRD that has no conditions yet."""

    def established() -> bool:
        found = json.loads(plane.kubectl("get", "crd", crd, "-o", "json").stdout)
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until(established, 60, f"the CRD {crd} to be established", interval=0.2)


def namespace_name(test_name: str) -> str:
    """A new namespace's name: ``e2e-``, the test's name as a DNS label, a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{slug}-{uuid.uuid4().hex[:5]}"


@contextlib.contextmanager
def fresh_namespace(plane: ControlPlane, test_name: str) -> Iterator[str]:
    """A new namespace for the test named ``test_name`` (pods can be created at once); deleted
    afterwards."""
    name = namespace_name(test_name)
    with plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.dev/e2e": "true"}}})
        # The ServiceAccount admission plugin rejects pods until the controller manager has
        # made the namespace's default service account.
        wait_until(
            lambda: exists(lambda: core.read_namespaced_service_account("default", name)),
            30,
            f"the default service account of {name}",
            interval=0.1,
        )
        try:
            yield name
        finally:
            try:
                core.delete_namespace(name)
            except ApiException as error:
                if error.status != 404:
                    raise


def exists(read: Callable[[], object]) -> bool:
    """Whether ``read`` finds its object (a 404 says not yet; other errors are raised)."""
    try:
        read()
    except ApiException as error:
        if error.status != 404:
            raise
        return False
    return True


def operator_env(
    plane: ControlPlane, storage_url: str | None = None, **extra: str
) -> dict[str, str]:
    """Environment of an operator under test (set with ``monkeypatch`` before it starts)."""
    env = {
        "KUBECONFIG": str(plane.kubeconfig),
        "KUBETUNE_RECONCILE_INTERVAL": "1",
        "KUBETUNE_GRACE_PERIOD": "20",
        "KUBETUNE_RUNNER_IMAGE": "kubetune:e2e",
        "KUBETUNE_IMAGE_PULL_POLICY": "Never",
        "KUBETUNE_RUNNER_EXTRA_ENV": "KUBETUNE_HEARTBEAT_INTERVAL=2,OMP_NUM_THREADS=1",
    }
    if storage_url:
        env["KUBETUNE_STORAGE_URL"] = storage_url
    env.update(extra)
    return env


@contextlib.contextmanager
def run_operator(namespace: str) -> Iterator[KopfRunner]:
    """``kopf run -m hpo_operator.handlers`` watching ``namespace``, stopped on exit."""
    args = ["run", "-m", "hpo_operator.handlers", "--namespace", namespace, "--standalone"]
    with KopfRunner(args, timeout=120) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]


def api_requests(
    events: Iterable[Mapping[str, Any]], since: dt.datetime, until: dt.datetime
) -> Counter[tuple[str, str]]:
    """Requests of the API server's audit ``events`` received in ``[since, until)``, counted by
    ``(verb, resource)`` (``pods``, ``hpostudies/status``, ...)."""
    counts: Counter[tuple[str, str]] = Counter()
    for event in events:
        received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"])
        if not since <= received < until:
            continue
        ref = event.get("objectRef") or {}
        resource = str(ref.get("resource") or event.get("requestURI", "?"))
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        counts[(str(event["verb"]), resource)] += 1
    return counts


def add_finished_trials(
    storage_url: str, study_name: str, spec: Mapping[str, Any], count: int, seed: int = 0
) -> None:
    """Create the Optuna study of ``spec`` (as the operator would) with ``count`` complete
    trials of its search space, as runners would have left them (kwok's pods run nothing)."""
    import random

    from kubetune_api.contract import STAGE_ATTR, WORKER_ATTR
    from kubetune_api.spec import validate_spec_mapping
    from kubetune_study.search import distribution
    from kubetune_study.storage import ensure_study, open_storage

    rng = random.Random(seed)
    model = validate_spec_mapping(dict(spec))
    space = {p.name: distribution(p) for p in model.search_space}
    storage = open_storage(storage_url, heartbeat=False)
    try:
        study = ensure_study(storage, study_name, model)
        study.add_trials(
            optuna.trial.create_trial(
                params={name: _draw(d, rng) for name, d in space.items()},
                distributions=space,
                values=[rng.random() for _ in model.directions],
                user_attrs={STAGE_ATTR: 0, WORKER_ATTR: f"runner-{i % 3}:1"},
            )
            for i in range(count)
        )
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def _draw(dist: Any, rng: Any) -> Any:
    """A value of an Optuna distribution (its step and log scale respected)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    if dist.step is not None:
        return dist.low + dist.step * rng.randint(0, int((dist.high - dist.low) / dist.step))
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def finished_trials(storage_url: str, study_name: str) -> dict[str, int]:
    """Trial counts by state in the Optuna storage, read directly (not through the operator)."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


class StudyClient:
    """kubectl on one namespace, with the reads the operator tests need."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        return self.plane.kubectl("-n", self.namespace, *args, check=check, input=input)

    def apply(self, document: Mapping[str, Any] | str, check: bool = True) -> Any:
        # JSON, not YAML: PyYAML writes the string "3e-2" bare, which kubectl reads as a number.
        text = document if isinstance(document, str) else json.dumps(document)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def study(self, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", "hpostudy", name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        study = self.study(name) or {}
        for cond in (study.get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def pods(self, name: str, component: str = COMPONENT_RUNNER) -> list[dict[str, Any]]:
        selector = f"{STUDY_LABEL}={name},{COMPONENT_LABEL}={component}"
        result = self.kubectl("get", "pods", "-l", selector, "-o", "json")
        return list(json.loads(result.stdout)["items"])

    def columns(self, name: str, *flags: str) -> dict[str, str]:
        """``kubectl get hpostudy NAME`` as {header: cell}, each cell read at its header's
        position: kubectl leaves a column with no value blank, so splitting on spaces misreads
        every column after it."""
        header, row = self.kubectl("get", "hpostudy", name, *flags).stdout.splitlines()[:2]
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        ends = [*starts[1:], None]
        return {
            header[start:end].strip(): row[start:end].strip()
            for start, end in zip(starts, ends, strict=True)
        }

    def configmap(self, name: str) -> dict[str, str] | None:
        result = self.kubectl("get", "configmap", name, "-o", "json", check=False)
        return json.loads(result.stdout).get("data") if result.returncode == 0 else None

    def wait_condition(
        self,
        name: str,
        type_: str,
        status: str,
        timeout: float,
        reason: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Wait for the condition's status, and its reason and a part of its message if given."""

        def probe() -> dict[str, Any] | None:
            cond = self.condition(name, type_)
            ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
            ok = ok and (message is None or message in str(cond.get("message")))
            return cond if ok else None

        what = f"{name}: {type_}={status} {reason or ''} {message or ''}"
        return wait_until(probe, timeout, what, diagnose=self.diagnose)

    def diagnose(self) -> str:
        parts = []
        for args in (
            ("get", "hpostudies", "-o", "yaml"),
            ("get", "pods", "-o", "wide"),
            ("get", "events", "--sort-by=.lastTimestamp"),
        ):
            result = self.kubectl(*args, check=False)
            parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout[-6000:]}{result.stderr}")
        return "\n".join(parts)


def delete_studies(studies: StudyClient) -> None:
    # Whatever a test left behind must not hold the namespace with a finalizer no one handles.
    studies.kubectl("delete", "hpostudies", "--all", "--wait=false", check=False)
    for item in yaml.safe_load(studies.kubectl("get", "hpostudies", "-o", "yaml").stdout)["items"]:
        studies.kubectl(
            "patch",
            "hpostudy",
            item["metadata"]["name"],
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
