"""Helpers shared by the test modules."""

from __future__ import annotations

from typing import Any


def base_document() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "digits"},
        "spec": {
            "objective": {"metric": "accuracy", "direction": "Maximize"},
            "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP", "config": {"a": 1}},
            "searchSpace": [
                {
                    "name": "learning_rate",
                    "type": "Float",
                    "low": "1e-4",
                    "high": "1e-1",
                    "scale": "Log",
                    "group": "Critical",
                },
                {
                    "name": "batch_size",
                    "type": "Categorical",
                    "choices": [32, 64],
                    "group": "Critical",
                },
                {
                    "name": "hidden_size",
                    "type": "Int",
                    "low": 16,
                    "high": 128,
                    "group": "Model",
                    "default": 64,
                },
            ],
            "stages": [{"groups": ["Critical"], "trials": 4}, {"groups": ["Critical", "Model"]}],
            "budget": {"maxTrials": 10, "maxFailedTrials": 2, "timeout": "1h30m"},
        },
    }
