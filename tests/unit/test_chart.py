"""Static checks of the Helm chart that need no helm binary and no cluster."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import yaml
from hpo_operator.config import OperatorConfig
from hpo_operator.metrics import OperatorMetrics
from prometheus_client import CollectorRegistry

from kubetune_study.metrics import RunnerMetrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
CRD_SOURCE = REPO / "crds" / "kubetune.dev_hpostudies.yaml"
CRD_COPY = CHART / "crds" / CRD_SOURCE.name
CAMEL_CASE = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def test_chart_crd_is_an_exact_copy_of_the_source_of_truth() -> None:
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{CRD_COPY.relative_to(REPO)} differs from {CRD_SOURCE.relative_to(REPO)}; "
        f"run: cp {CRD_SOURCE.relative_to(REPO)} {CRD_COPY.relative_to(REPO)}"
    )


def test_chart_crds_folder_holds_only_the_crd() -> None:
    assert sorted(p.name for p in CRD_COPY.parent.iterdir()) == [CRD_SOURCE.name]


# Maps below these keys are user data (labels, quantities, security contexts), not settings.
USER_DATA = {
    "resources",
    "podAnnotations",
    "podLabels",
    "annotations",
    "nodeSelector",
    "affinity",
    "extraLabels",
    "extraEnv",
    "podSecurityContext",
    "securityContext",
    "labels",
}
KEY_LINE = re.compile(r"^(\s*)([^\s#-][^:]*):(.*)$")


def _setting_lines() -> Iterator[tuple[int, str, str, bool]]:
    """``(line number, dotted key, previous line, is_leaf)`` of each setting in values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    for number, line in enumerate(lines, start=1):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(parent in USER_DATA for _, parent in stack):
            continue
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        previous = lines[number - 2].strip() if number > 1 else ""
        following = lines[number].strip() if number < len(lines) else ""
        is_leaf = bool(match.group(3).strip()) or following.startswith("-") or key in USER_DATA
        yield number, dotted, previous, is_leaf


def test_values_keys_are_camel_case() -> None:
    bad = [key for _, key, _, _ in _setting_lines() if not CAMEL_CASE.match(key.split(".")[-1])]
    assert not bad, f"values.yaml keys must be camelCase: {bad}"


def test_every_values_setting_is_documented() -> None:
    """Each setting (a key with a value, or a user-data map) has a comment right above it."""
    undocumented = [
        f"values.yaml:{number}: {key}"
        for number, key, previous, is_leaf in _setting_lines()
        if is_leaf and not previous.startswith("#")
    ]
    assert not undocumented, "values.yaml settings without a comment:\n" + "\n".join(undocumented)


#: A value each operator setting accepts, different from its default.
SETTING_SAMPLES = {
    "KUBETUNE_RUNNER_IMAGE": "example.org/runner:1",
    "KUBETUNE_IMAGE_PULL_POLICY": "Always",
    "KUBETUNE_RUNNER_UID": "1234",
    "KUBETUNE_GRACE_PERIOD": "17",
    "KUBETUNE_ESTIMATE_CPU": "3",
    "KUBETUNE_ESTIMATE_MEMORY": "9Gi",
    "KUBETUNE_RECONCILE_INTERVAL": "7",
    "KUBETUNE_MAX_RUNNER_FAILURES": "9",
    "KUBETUNE_RUNNER_START_ATTEMPTS": "2",
    "KUBETUNE_RUNNER_START_BACKOFF": "5",
    "KUBETUNE_RUNNER_EXTRA_LABELS": "team=a",
    "KUBETUNE_RUNNER_EXTRA_ENV": "A=b",
    "KUBETUNE_RUNNER_TOLERATIONS": "dedicated:NoSchedule",
    "KUBETUNE_RUNNER_QUEUE_NAME": "team-gpus",
    "KUBETUNE_STORAGE_URL": "postgresql://u:p@db/kubetune",
    "KUBETUNE_DEFAULT_STORAGE_SECRET": "pg",
    "KUBETUNE_LEADER_ELECTION_LEASE": "kubetune-system/kubetune-operator",
    "KUBETUNE_LEASE_DURATION": "20",
    "KUBETUNE_METRICS_PORT": "9091",
    "KUBETUNE_RUNNER_METRICS_PORT": "9101",
}


def test_operator_settings_the_chart_passes_are_read_by_the_operator() -> None:
    """Every KUBETUNE_* variable the Deployment sets changes the operator's settings."""
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    passed = set(re.findall(r"\bKUBETUNE_[A-Z_]+\b", deployment))
    assert passed, "the Deployment sets no KUBETUNE_* variable"
    defaults = OperatorConfig.from_env({})
    for name in sorted(passed):
        assert name in SETTING_SAMPLES, f"{name}: add a sample value to this test"
        config = OperatorConfig.from_env({name: SETTING_SAMPLES[name]})
        assert config != defaults, f"operator/config.py does not read {name}"


def test_the_dashboard_image_is_the_optuna_dashboard_the_tests_open() -> None:
    """tests/e2e/test_dashboard.py opens the pinned optuna-dashboard package in a browser with
    the chart's arguments; the chart must deploy that same version."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["dashboard"]["image"]["tag"] == f"v{version('optuna-dashboard')}"


def _exported_series() -> set[str]:
    """Every series name the operator and a runner export (with the suffixes Prometheus adds)."""
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    RunnerMetrics("ns", "study", registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }


def test_the_grafana_dashboard_queries_only_metrics_kubetune_exports() -> None:
    dashboard = json.loads((CHART / "dashboards" / "kubetune.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {name for expr in expressions for name in re.findall(r"\bkubetune_\w+", expr)}
    exported = _exported_series()
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    # ... and shows every one of them.
    shown = {re.sub(r"_(total|bucket)$", "", name) for name in queried}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    assert shown == families, f"not on the dashboard: {sorted(families - shown)}"
