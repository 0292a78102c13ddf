"""Helpers for tests that run real runner processes against a real storage."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.spec import dump_yaml
from tests.helpers import study_document

#: A small digits study (seconds per trial); tests replace top-level spec fields.
DIGITS_SPEC: dict[str, Any] = {
    "searchSpace": [
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
    ],
    "stages": None,
    "budget": {"maxTrials": 6},
    "sampler": {"type": "TPE", "seed": 0},
    "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP"},
    "training": {"epochs": 1},
}


def digits_study(name: str, **spec_changes: Any) -> dict[str, Any]:
    return study_document(name, **{**DIGITS_SPEC, **spec_changes})


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(doc: dict[str, Any]) -> Path:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(dump_yaml(doc))
        return path

    return write


def runner_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, KUBETUNE_CPU_THREADS="1", KUBETUNE_WAIT_SECONDS="0.5")
    env.update(extra)
    return env


def kubetune(
    *args: str, cwd: Path | None = None, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """The ``kubetune`` command, run to completion with this interpreter (``env``: added to
    its environment)."""
    return subprocess.run(
        [sys.executable, "-m", "trial_runner.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=runner_env(**env),
        timeout=timeout,
    )


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
