"""Fixtures for end-to-end tests against a real control plane with simulated GPU nodes.

- ``control_plane`` (session): a started :class:`~tests.harness.controlplane.ControlPlane`
  with kwok.
- ``namespace`` (function): a fresh namespace name, deleted after the test.
- ``simulated_cluster`` (function): ``create(groups) -> node names``; nodes deleted after.
- ``test_images`` (session): the kubetune image built from this checkout and the node's pause
  image, as OCI archives (``hack/image/build.sh``).
- ``real_node`` (session): a :class:`~tests.harness.real_node.RealNode` (kubelet, containerd,
  runc, CNI, kube-proxy) joined to the control plane, with both images imported.
- ``node_database`` (function): a fresh PostgreSQL database, with the URL pods on the real
  node use (:class:`tests.harness.node_fixtures.Database`).
- ``chart_operator`` (module): the Helm chart installed, its operator a container of the test
  image on the real node (:class:`tests.harness.node_fixtures.Operator`).
- ``node_studies`` (function): a :class:`~tests.harness.operator_fixtures.StudyClient` on a new
  restricted namespace holding the chart's default storage Secret (``node_database``).
- ``hpostudy_crd`` (session), ``studies`` (function): the generated CRD applied, and a
  :class:`tests.harness.operator_fixtures.StudyClient` on the test's restricted ``namespace``.
- ``scheduling_operator`` (function): runs the operator in this process for ``namespace``
  (kwok plays the runner pods' kubelet); the studies are deleted afterwards.

The binaries come from ``KUBETUNE_CONTROL_PLANE_BIN`` or the build cache of
``hack/control-plane/build.sh``. Without them the tests are skipped, except under ``CI=true``,
where they fail: CI must never pass without having run them. A control plane that does not start
always fails the tests.

The fixtures are thin: what they start and how is in :mod:`tests.harness`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import started, unavailable
from tests.harness.node_fixtures import (
    Database,
    Operator,
    create_database,
    install_chart_operator,
    study_namespace,
)
from tests.harness.operator_fixtures import (
    StudyClient,
    delete_studies,
    fresh_namespace,
    install_crd,
    operator_env,
    run_operator,
)
from tests.harness.prerequisites import BuiltImages, built_images, cache_root
from tests.harness.prerequisites import control_plane_bin_dir as find_control_plane_bin_dir
from tests.harness.real_node import RealNode
from tests.harness.simulated_cluster import NodeGroup, create_nodes, delete_nodes


@pytest.fixture(scope="session")
def control_plane_bin_dir() -> Path:
    """The directory with etcd, kube-*, kwok and helm."""
    return find_control_plane_bin_dir()


@pytest.fixture(scope="session")
def control_plane(
    control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, for the session."""
    plane = ControlPlane(control_plane_bin_dir, tmp_path_factory.mktemp("control-plane"))
    with started(plane, "the control plane"):
        yield plane


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace for the test (pods can be created at once); deleted afterwards."""
    with fresh_namespace(control_plane, request.node.name) as name:
        yield name


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


@pytest.fixture(scope="session")
def test_images() -> BuiltImages:
    """``$KUBETUNE_TEST_IMAGES`` (``hack/test.sh`` sets it after building), else the build cache
    of this checkout (``hack/image/build.sh --check``); missing images skip, or fail in CI."""
    return built_images()


@pytest.fixture(scope="session")
def real_node(control_plane: ControlPlane, test_images: BuiltImages) -> Iterator[RealNode]:
    """A real kubelet node running containers of the built images, for the session."""
    if os.geteuid() != 0:
        unavailable("the real node needs root (namespaces, mounts, cgroups)")
    node = RealNode(
        control_plane,
        cache_root() / "node",
        [test_images.archive, test_images.pause_archive],
        sandbox_image=test_images.pause_image,
    )
    with started(node, "the real node"):
        yield node


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
