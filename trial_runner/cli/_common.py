"""What every ``kubetune`` command shares: exit codes, errors, loading the study and storage."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

from kubetune_api.contract import (
    DEVICE_UNAVAILABLE_EXIT_CODE,
    OUT_OF_MEMORY_EXIT_CODE,
    STORAGE_ENV,
    STUDY_ENV,
    TASK_LOAD_EXIT_CODE,
)
from kubetune_api.spec import HPOStudy, load_study, study_from_text
from kubetune_study.storage import DEFAULT_LOCAL_STORAGE, open_storage, redact

__all__ = [
    "EXIT_DEVICE_UNAVAILABLE",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUT_OF_MEMORY",
    "EXIT_STORAGE",
    "EXIT_STUDY_FAILED",
    "EXIT_TASK_LOAD",
    "TERMINATION_MESSAGE_LIMIT",
    "CliError",
    "StepLog",
    "fmt",
    "load_study_or_env",
    "mib",
    "open_existing_study",
    "storage_and_name",
    "storage_url",
    "write_termination_message",
]

EXIT_OK, EXIT_STUDY_FAILED, EXIT_INPUT, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: A runner pod's processes kept running out of memory on their shared device.
EXIT_OUT_OF_MEMORY = OUT_OF_MEMORY_EXIT_CODE
#: The task could not be imported or could not load its data.
EXIT_TASK_LOAD = TASK_LOAD_EXIT_CODE
#: The runner was given a GPU that CUDA cannot use.
EXIT_DEVICE_UNAVAILABLE = DEVICE_UNAVAILABLE_EXIT_CODE
#: Kubernetes keeps at most this many bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


class StepLog:
    """Progress lines on stderr for commands whose steps take seconds; stdout stays for
    results (``--json``)."""

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.command = command
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"kubetune {self.command}: [{elapsed:5.1f}s] {message}",
            file=self.stream or sys.stderr,
            flush=True,
        )


def write_termination_message(path: str | None, message: str) -> None:
    """Write ``message`` (one line, credentials redacted, bounded) to the termination-message
    file at ``path``, unless something is there already: a runner process of the pod, or the
    command itself, said it first."""
    if not path:
        return
    line = redact(" ".join(message.split()))
    try:
        with open(path, "a") as f:
            if f.tell() == 0:
                f.write(line.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore"))
    except OSError:
        pass  # no termination-message file here (not in a pod): the message is on stderr


def storage_url(flag: str | None) -> str:
    """The ``--storage`` flag, else ``$KUBETUNE_STORAGE_URL``, else the local journal."""
    return flag or os.environ.get(STORAGE_ENV) or DEFAULT_LOCAL_STORAGE


def storage_and_name(args: argparse.Namespace, study: HPOStudy) -> tuple[str, str]:
    """The storage URL (:func:`storage_url`) and the Optuna study's name (``--study-name``,
    else the HPOStudy's) a command's flags give."""
    return storage_url(args.storage), args.study_name or study.name


def load_study_or_env(path: str | None) -> HPOStudy:
    """The study file, else the document in ``$KUBETUNE_STUDY`` (as pods get it)."""
    if path:
        return load_study(path)
    raw = os.environ.get(STUDY_ENV)
    if not raw:
        raise CliError(f"no study: give STUDY.yaml or set {STUDY_ENV}")
    return study_from_text(raw, f"${STUDY_ENV}")


def open_existing_study(url: str, name: str) -> Any:
    import optuna

    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise CliError(
            f"no study named {name!r} in {redact(url)} (run it first with kubetune run)"
        ) from None


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
