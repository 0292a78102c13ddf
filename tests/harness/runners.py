"""Real runner processes: the ``kubetune`` command run to completion, a runner started in the
background, and the environment both get (one CPU thread, short waits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["kubetune", "runner_env", "start_runner"]


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
