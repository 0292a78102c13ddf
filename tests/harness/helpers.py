"""Helpers shared by every test layer and the benchmarks: the one wait, ``IN_CI``, the checkout's
root, a free port, what a missing prerequisite does, a component started for a block, the one
search for a leaked secret. (The one study builder is :mod:`tests.harness.studies`.)"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar
from urllib.parse import quote

__all__ = [
    "IN_CI",
    "REPO_ROOT",
    "Startable",
    "free_port",
    "secret_leaks",
    "started",
    "unavailable",
    "wait_until",
]

T = TypeVar("T")

#: Under ``CI=true`` a missing PostgreSQL or control plane fails the tests; it never skips them.
IN_CI = os.environ.get("CI", "").lower() == "true"
#: The checkout the tests run from.
REPO_ROOT = Path(__file__).resolve().parents[2]


class Startable(Protocol):
    """A component the tests start and stop (the control plane, the real node, Kueue)."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


def unavailable(message: str, missing: str = "control plane") -> NoReturn:
    """A prerequisite (binaries, an image, root) is missing: skip the test, or fail it in CI."""
    import pytest

    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing {missing} is a failure)", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def started(component: S, what: str) -> Iterator[S]:
    """``component`` started for the block and stopped after it; one that does not start fails
    the test, naming ``what``."""
    import pytest

    try:
        component.start()
    except Exception as error:
        pytest.fail(f"{what} did not start: {error}", pytrace=False)
    try:
        yield component
    finally:
        component.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.5,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    After ``timeout`` seconds the test fails naming ``what``, the last value and, when given,
    what ``diagnose()`` says.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last value: {value!r}"
                + details
            )
        time.sleep(interval)


def secret_leaks(secret: str, sources: Mapping[str, str], context: int = 60) -> list[str]:
    """Where ``secret`` appears in ``sources`` (name -> text), as written, percent-encoded (in a
    URL) or JSON-escaped: one ``"name: ...text around it..."`` per hit, for a failure message."""
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    found = []
    for name, text in sources.items():
        for form in sorted(forms):
            at = text.find(form)
            if at >= 0:
                around = text[max(at - context, 0) : at + len(form) + context]
                found.append(f"{name}: ...{around}...")
    return found
