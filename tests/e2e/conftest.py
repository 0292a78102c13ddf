"""Fixtures for end-to-end tests against a real control plane with simulated GPU nodes.

- ``control_plane`` (session): a started :class:`controlplane.ControlPlane` with kwok.
- ``namespace`` (function): a fresh namespace name, deleted after the test.
- ``simulated_cluster`` (function): ``create(groups) -> node names``; nodes deleted after.
- ``test_images`` (session): the kubetune image built from this checkout and the node's pause
  image, as OCI archives (``hack/image/build.sh``).
- ``real_node`` (session): a :class:`real_node.RealNode` (kubelet, containerd, runc, CNI,
  kube-proxy) joined to the control plane, with both images imported.
- ``node_database`` (function): a fresh PostgreSQL database, with the URL pods on the real
  node use (:class:`node_fixtures.Database`).
- ``chart_operator`` (module): the Helm chart installed, its operator a container of the test
  image on the real node (:class:`node_fixtures.Operator`).
- ``node_studies`` (function): a :class:`operator_fixtures.StudyClient` on a new restricted
  namespace holding the chart's default storage Secret (``node_database``).
- ``hpostudy_crd`` (session), ``studies`` (function): the generated CRD applied, and a
  :class:`operator_fixtures.StudyClient` on the test's restricted ``namespace``.
- ``scheduling_operator`` (function): runs the operator in this process for ``namespace``
  (kwok plays the runner pods' kubelet); the studies are deleted afterwards.

The binaries come from ``KUBETUNE_CONTROL_PLANE_BIN`` or the build cache of
``hack/control-plane/build.sh``. Without them the tests are skipped, except under ``CI=true``,
where they fail: CI must never pass without having run them. A control plane that does not start
always fails the tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.controlplane import (
    BUILD_SCRIPT,
    REPO_ROOT,
    ControlPlane,
    find_bin_dir,
    missing_binaries,
)
from tests.e2e.node_fixtures import (
    Database,
    Operator,
    create_database,
    install_chart_operator,
    restricted_namespace,
)
from tests.e2e.operator_fixtures import (
    StudyClient,
    delete_studies,
    install_crd,
    operator_env,
    run_operator,
)
from tests.e2e.real_node import RealNode
from tests.e2e.simulated_cluster import NodeGroup, create_nodes, delete_nodes
from tests.helpers import IN_CI, wait_until

# The client's type hints want V1* models; the tests pass plain dicts, which it accepts.
k8s: Any = kubernetes

BUILD_HINT = (
    f"build them with `bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}` (the first build takes about "
    "20 minutes on 2 cores; see hack/control-plane/README.md)"
)


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing control plane is a failure)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def control_plane_bin_dir() -> Path:
    """The directory with etcd, kube-*, kwok and helm."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable(f"the control-plane binaries are not built; {BUILD_HINT}")
    missing = missing_binaries(bin_dir)
    if missing:
        _unavailable(f"{bin_dir} lacks {', '.join(missing)}; {BUILD_HINT}")
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(
    control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, for the session."""
    plane = ControlPlane(control_plane_bin_dir, tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except Exception as error:
        pytest.fail(f"the control plane did not start: {error}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{slug}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace for the test (pods can be created at once); deleted afterwards."""
    name = _namespace_name(request.node.name)
    with control_plane.api_client() as client:
        core = k8s.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.dev/e2e": "true"}}})
        # The ServiceAccount admission plugin rejects pods until the controller manager has
        # made the namespace's default service account.
        wait_until(
            lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
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


def _exists(read: Callable[[], object]) -> bool:
    """Whether ``read`` finds its object (a 404 says not yet; other errors are raised)."""
    try:
        read()
    except ApiException as error:
        if error.status != 404:
            raise
        return False
    return True


@pytest.fixture
def simulated_cluster(control_plane: ControlPlane) -> Iterator[Callable[..., list[str]]]:
    """``create(groups: Sequence[NodeGroup]) -> list[str]`` makes Ready simulated nodes.

    The nodes made through it are deleted when the test ends.
    """
    created: list[str] = []
    client = control_plane.api_client()

    def create(groups: Sequence[NodeGroup], timeout: float = 60.0) -> list[str]:
        names = create_nodes(client, groups, timeout=timeout)
        created.extend(names)
        return names

    try:
        yield create
    finally:
        delete_nodes(client, created)
        client.close()


IMAGE_SCRIPT = REPO_ROOT / "hack" / "image" / "build.sh"


@dataclass(frozen=True)
class BuiltImages:
    """The images a real node runs: kubetune (this checkout) and the sandbox's pause."""

    image: str
    archive: Path
    pause_image: str
    pause_archive: Path


def cache_root() -> Path:
    """``$KUBETUNE_CACHE``, else ``$XDG_CACHE_HOME/kubetune`` or ``~/.cache/kubetune``."""
    explicit = os.environ.get("KUBETUNE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubetune"


@pytest.fixture(scope="session")
def test_images() -> BuiltImages:
    """``$KUBETUNE_TEST_IMAGES`` (``hack/test.sh`` sets it after building), else the build cache
    of this checkout (``hack/image/build.sh --check``); missing images skip, or fail in CI."""
    printed = os.environ.get("KUBETUNE_TEST_IMAGES", "")
    if not printed:
        check = subprocess.run(["bash", str(IMAGE_SCRIPT), "--check"], capture_output=True)
        if check.returncode == 0:
            printed = subprocess.run(
                ["bash", str(IMAGE_SCRIPT), "--print"], capture_output=True, text=True
            ).stdout
    fields = printed.split()
    if len(fields) != 4:
        _unavailable(
            f"the kubetune image of this checkout is not built; run `bash "
            f"{IMAGE_SCRIPT.relative_to(REPO_ROOT)}` (10-20 minutes the first time)"
        )
    images = BuiltImages(fields[0], Path(fields[1]), fields[2], Path(fields[3]))
    for archive in (images.archive, images.pause_archive):
        if not archive.is_file():
            _unavailable(f"{archive} is missing; run `bash {IMAGE_SCRIPT.relative_to(REPO_ROOT)}`")
    return images


@pytest.fixture(scope="session")
def real_node(control_plane: ControlPlane, test_images: BuiltImages) -> Iterator[RealNode]:
    """A real kubelet node running containers of the built images, for the session."""
    if os.geteuid() != 0:
        _unavailable("the real node needs root (namespaces, mounts, cgroups)")
    node = RealNode(
        control_plane,
        cache_root() / "node",
        [test_images.archive, test_images.pause_archive],
        sandbox_image=test_images.pause_image,
    )
    try:
        node.start()
    except Exception as error:
        pytest.fail(f"the real node did not start: {error}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def node_database(postgresql_proc: Any, real_node: RealNode) -> Iterator[Database]:
    """A fresh database on the suite's PostgreSQL, reachable from the real node's pods."""
    with create_database(postgresql_proc, real_node) as database:
        yield database


@pytest.fixture(scope="module")
def chart_operator(
    control_plane: ControlPlane,
    real_node: RealNode,
    test_images: BuiltImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The chart's operator (watching every namespace) for the tests of one module."""
    with install_chart_operator(
        control_plane, real_node, test_images.image, tmp_path_factory.mktemp("chart")
    ) as operator:
        yield operator


@contextlib.contextmanager
def study_namespace(
    control_plane: ControlPlane, database: Database, prefix: str
) -> Iterator[StudyClient]:
    """A restricted namespace for studies, with the chart's default storage Secret in it."""
    namespace = restricted_namespace(control_plane, prefix)
    control_plane.kubectl(
        *("create", "secret", "generic", "kubetune-postgres", "-n", namespace),
        f"--from-literal=url={database.pod_url}",
    )
    client = StudyClient(control_plane, namespace)
    try:
        yield client
    finally:
        # The operator removes its finalizers while it still runs.
        client.kubectl(
            "delete", "hpostudies", "--all", "--wait=true", "--timeout=120s", check=False
        )
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def node_studies(
    control_plane: ControlPlane, chart_operator: Operator, node_database: Database
) -> Iterator[StudyClient]:
    with study_namespace(control_plane, node_database, "e2e-node") as client:
        yield client


# --------------------------------------------------------------------------- studies on kwok


@pytest.fixture(scope="session")
def hpostudy_crd(control_plane: ControlPlane) -> None:
    install_crd(control_plane)


@pytest.fixture
def studies(control_plane: ControlPlane, namespace: str, hpostudy_crd: None) -> StudyClient:
    # The runner pods must pass the strictest Pod Security Standard.
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return StudyClient(control_plane, namespace)


@pytest.fixture
def scheduling_operator(
    control_plane: ControlPlane,
    namespace: str,
    studies: StudyClient,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[], Any]]:
    """The operator in this process; kwok plays the runner pods' kubelet."""
    for key, value in operator_env(control_plane, storage_url=postgres_url).items():
        monkeypatch.setenv(key, value)
    yield lambda: run_operator(namespace)
    delete_studies(studies)
