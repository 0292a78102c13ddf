"""The operator's login (which API server address a pod and a laptop use) and its client."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
from hpo_operator import handlers, runtime
from hpo_operator._cluster import api_client


def _service_account(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server="https://kubernetes.default.svc",
        ca_path="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        token="token",
        default_namespace="ns",
    )


def test_in_a_pod_the_service_host_is_used_not_the_cluster_dns_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account", _service_account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    info = handlers.login()
    assert info is not None
    assert info.server == "https://10.96.0.1:6443"
    assert info.token == "token" and info.default_namespace == "ns"


def test_an_ipv6_service_host_is_bracketed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account", _service_account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    info = handlers.login()
    assert info is not None and info.server == "https://[fd00::1]:443"


def test_outside_a_pod_the_kubeconfig_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    from_kubeconfig = kopf.ConnectionInfo(server="https://127.0.0.1:6443")
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: from_kubeconfig)
    assert handlers.login() is from_kubeconfig


def test_the_client_keeps_a_connection_for_each_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Passes run in WORKERS threads over one client: a smaller connection pool drops and
    re-opens (TLS included) connections after every burst of pod creations at scale."""
    _kubeconfig(monkeypatch, tmp_path)
    client = api_client(connections=runtime.WORKERS)
    try:
        assert client.configuration.host == "https://127.0.0.1:6443"
        assert client.rest_client.pool_manager.connection_pool_kw["maxsize"] >= runtime.WORKERS
    finally:
        client.close()


def test_register_puts_every_handler_in_a_registry_with_the_interval_given() -> None:
    """The kopf entry registers the handlers once with the interval it read; another registry
    (another operator in the process) gets its own."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, 2.5)
    timers = registry._spawning.get_all_handlers()
    assert [(t.id, t.interval) for t in timers] == [("on_tick", 2.5)]
    indexes = {h.id for h in registry._indexing.get_all_handlers()}
    assert indexes == {"study_pods", "mount_failures", "cluster_nodes"}
    changes = sorted(h.id for h in registry._changing.get_all_handlers())
    assert changes == ["on_change", "on_change", "on_change/spec", "on_delete"]


def _kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A kubeconfig naming an API server at 127.0.0.1:6443 (nothing is asked of it)."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_startup_keeps_the_runtime_in_the_operator_memo_and_cleanup_releases_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every study's memo is a copy of the operator's: its passes find the one runtime, and
    the settings read when the operator starts (not when the module was imported)."""
    _kubeconfig(monkeypatch, tmp_path)
    monkeypatch.setenv("KUBETUNE_RUNNER_IMAGE", "example/runner:1")
    monkeypatch.delenv("KUBETUNE_METRICS_PORT", raising=False)
    memo = kopf.Memo()
    with pytest.raises(RuntimeError, match="did not start"):
        runtime.Runtime.of(memo)
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings, memo=memo, logger=logging.getLogger("test"))
    try:
        started = runtime.Runtime.of(copy.copy(memo))
        assert started is runtime.Runtime.of(memo)
        assert started.config.runner_image == "example/runner:1"
        assert settings.execution.max_workers == runtime.WORKERS
        assert settings.persistence.finalizer == "kubetune.dev/finalizer"
    finally:
        handlers.close(memo=memo)
        started.client.close()
