"""Real runner processes: the ``kubetune`` command run to completion, a runner started in the
background, and the environment both get (one CPU thread, short waits)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.harness.helpers import wait_until

T = TypeVar("T")

#: What a runner logs once its task is loaded, while the study does not exist yet.
WAITING_FOR_STUDY = "waiting up to"

__all__ = ["kubetune", "runner_env", "start_runner", "start_runners_together"]


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


def start_runners_together(
    study: Path, url: str, name: str, logs: list[Path], create: Callable[[], T]
) -> tuple[list[subprocess.Popen[bytes]], T]:
    """One runner per log, started before the study exists; ``create`` makes it once every
    runner has loaded its task and waits for it, so they all claim from the first trial on
    (a runner that loads slowly on a busy machine would otherwise find the budget spent)."""
    procs = [start_runner(study, url, name, log) for log in logs]

    def all_waiting() -> bool:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"runner exited {proc.returncode}:\n{log.read_text()}"
        return all(WAITING_FOR_STUDY in log.read_text() for log in logs)

    wait_until(all_waiting, 300, "every runner to load its task", interval=0.2)
    return procs, create()
