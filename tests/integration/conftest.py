"""Helpers for tests that run real runner processes against a real storage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import base_document


def digits_study(name: str, **spec_changes: Any) -> dict[str, Any]:
    doc = base_document()
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    spec["searchSpace"] = [
        {
            "name": "learning_rate",
            "type": "Float",
            "low": "1e-3",
            "high": "3e-2",
            "scale": "Log",
            "group": "Critical",
        },
        {"name": "batch_size", "type": "Categorical", "choices": [32, 64], "group": "Critical"},
        {
            "name": "hidden_size",
            "type": "Int",
            "low": 16,
            "high": 64,
            "group": "Model",
            "default": 32,
        },
    ]
    spec["stages"] = None
    spec["budget"] = {"maxTrials": 6}
    spec["sampler"] = {"type": "TPE", "seed": 0}
    spec["task"] = {"entrypoint": "trial_runner.tasks.digits:DigitsMLP"}
    spec["training"] = {"epochs": 1}
    spec.update(spec_changes)
    return doc


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(doc: dict[str, Any]) -> Path:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def runner_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, KUBETUNE_CPU_THREADS="1", KUBETUNE_WAIT_SECONDS="0.5")
    env.update(extra)
    return env


def start_runner(
    study: Path, url: str, name: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - closed by the child
    cmd = [
        sys.executable,
        "-m",
        "trial_runner.cli",
        "runner",
        "--study-name",
        name,
        "--storage",
        url,
        str(study),
    ]
    proc = subprocess.Popen(cmd, stdout=handle, stderr=handle, env=runner_env(**env))
    handle.close()
    return proc


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
