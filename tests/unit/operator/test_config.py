"""The operator's settings, read from its environment."""

from __future__ import annotations

import pytest
from hpo_operator.config import OperatorConfig, reconcile_interval


def test_bad_operator_settings_name_the_variable() -> None:
    with pytest.raises(ValueError, match="KUBETUNE_IMAGE_PULL_POLICY"):
        OperatorConfig.from_env({"KUBETUNE_IMAGE_PULL_POLICY": "Sometimes"})
    with pytest.raises(ValueError, match="KUBETUNE_RUNNER_EXTRA_LABELS"):
        OperatorConfig.from_env({"KUBETUNE_RUNNER_EXTRA_LABELS": "no-equals-sign"})
    with pytest.raises(ValueError, match="KUBETUNE_METRICS_PORT: expected a port number"):
        OperatorConfig.from_env({"KUBETUNE_METRICS_PORT": "http"})
    with pytest.raises(ValueError, match="KUBETUNE_RUNNER_METRICS_PORT"):
        OperatorConfig.from_env({"KUBETUNE_RUNNER_METRICS_PORT": "70000"})
    with pytest.raises(ValueError, match="KUBETUNE_RUNNER_QUEUE_NAME: expected a LocalQueue"):
        OperatorConfig.from_env({"KUBETUNE_RUNNER_QUEUE_NAME": "Team_A"})
    with pytest.raises(ValueError, match="KUBETUNE_RUNNER_QUEUE_NAME"):
        OperatorConfig.from_env({"KUBETUNE_RUNNER_QUEUE_NAME": "q" * 64})
    assert OperatorConfig.from_env({}).queue_name is None
    assert OperatorConfig.from_env({"KUBETUNE_RUNNER_QUEUE_NAME": "gpus"}).queue_name == "gpus"
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_DEFAULT_STORAGE_SECRET": "pg",
            "KUBETUNE_RUNNER_TOLERATIONS": "dedicated=hpo:NoSchedule",
        }
    )
    assert config.default_storage_secret == ("pg", "url")
    assert config.tolerations == (
        {"key": "dedicated", "operator": "Equal", "value": "hpo", "effect": "NoSchedule"},
    )


def test_reconcile_interval_is_read_once_for_the_timer_and_the_settings() -> None:
    env = {"KUBETUNE_RECONCILE_INTERVAL": "2.5"}
    assert reconcile_interval(env) == 2.5
    assert OperatorConfig.from_env(env).reconcile_interval == 2.5
    assert reconcile_interval({}) == 5.0
