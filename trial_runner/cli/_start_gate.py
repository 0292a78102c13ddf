"""The start gate: runner processes started before their study is set up claim together.

A supervisor (``kubetune run``, a runner pod with ``--processes N``) starts its processes
behind a gate (:class:`StartGate`): each loads its task, says it is ready on one pipe
(:data:`~kubetune_api.contract.START_READY_FD_ENV`) and waits on another
(:data:`~kubetune_api.contract.START_GATE_FD_ENV`, :func:`wait_for_start_gate`). The gate opens
once the study is set up (:meth:`StartGate.open`) and every process is ready or has exited, at
most :data:`START_BARRIER_SECONDS` later; so they start claiming together, and a quick one does
not spend a small budget while the others still load. A gate closed unopened (end of file)
tells the waiting processes that the set-up failed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time

from kubetune_api.contract import START_GATE_FD_ENV, START_READY_FD_ENV
from trial_runner.cli._common import EXIT_INTERRUPTED, CliError

__all__ = ["START_BARRIER_SECONDS", "StartGate", "wait_for_start_gate"]

log = logging.getLogger("kubetune")

#: Seconds the processes started together wait, once the study is set up, for the last of
#: them to load its task; after that the ready ones start claiming.
START_BARRIER_SECONDS = 120.0


def wait_for_start_gate() -> None:
    """Say this runner is ready (:data:`START_READY_FD_ENV`), then block until its supervisor
    opens the gate (:data:`START_GATE_FD_ENV`): the study is set up and every runner loaded."""
    ready = os.environ.pop(START_READY_FD_ENV, None)
    if ready is not None:
        try:
            os.write(int(ready), b"r")
        except BrokenPipeError:
            pass  # the supervisor is gone; the gate says what to do
        finally:
            os.close(int(ready))
    raw = os.environ.pop(START_GATE_FD_ENV, None)
    if raw is None:
        return
    fd = int(raw)
    try:
        go = os.read(fd, 1)
    finally:
        os.close(fd)
    if not go:
        raise CliError("kubetune run stopped before the study was set up", EXIT_INTERRUPTED)


class StartGate:
    """The supervisor's side of the gate: the pipes, and who said ready.

    The processes to gate are started between construction and :meth:`started`, with
    :meth:`env` in their environment and :attr:`child_fds` passed to them.
    """

    def __init__(self) -> None:
        gate, opener = os.pipe()  # the processes read; this end opens the gate
        hears, ready = os.pipe()  # the processes write; this end hears them
        os.set_blocking(hears, False)
        self._gate: int | None = opener
        self._ready: int | None = hears
        self._child_ends: tuple[int, int] | None = (gate, ready)
        self._readies = 0
        self._gated: list[subprocess.Popen[bytes]] = []
        self._open_by: float | None = None  # open was called; open at the latest then

    @property
    def child_fds(self) -> tuple[int, ...]:
        """The pipe ends a gated process inherits (none once :meth:`started`)."""
        return self._child_ends or ()

    def env(self) -> dict[str, str]:
        """The environment that tells a process where its ends of the gate are."""
        if self._child_ends is None:
            return {}
        gate, ready = self._child_ends
        return {START_GATE_FD_ENV: str(gate), START_READY_FD_ENV: str(ready)}

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        """A process started behind the gate."""
        self._gated.append(proc)

    def started(self) -> None:
        """Every gated process started: this process keeps none of their ends."""
        if self._child_ends is not None:
            for fd in self._child_ends:
                os.close(fd)
            self._child_ends = None

    def open(self) -> None:
        """The study is set up: let the gated processes claim as soon as all are ready."""
        if self._gate is not None and self._open_by is None:
            self._open_by = time.monotonic() + START_BARRIER_SECONDS
        self.poll()

    def poll(self) -> None:
        """Open the gate if :meth:`open` was called and every process is ready or has exited,
        or the barrier's time is up."""
        if self._gate is None or self._open_by is None:
            return
        self._hear_readies()
        exited = sum(p.poll() is not None for p in self._gated)
        waiting = len(self._gated) - self._readies - exited
        if self._ready is not None and waiting > 0 and time.monotonic() < self._open_by:
            return
        if waiting > 0:
            log.warning("%d runner(s) still loading their task: the others start now", waiting)
        os.write(self._gate, b"g" * len(self._gated))
        self.close()

    def _hear_readies(self) -> None:
        if self._ready is None:
            return
        try:
            said: bytes | None = os.read(self._ready, 4096)
        except BlockingIOError:
            said = None  # nothing new
        if said == b"":  # every gated process has said so or exited: end of file
            self._close_ready()
        elif said:
            self._readies += len(said)

    def wake_fds(self) -> list[int]:
        """What to wait on for a process to say it is ready (once :meth:`open` was called)."""
        return [self._ready] if self._ready is not None and self._open_by is not None else []

    def close(self) -> None:
        """Close the gate: a process still waiting at it (never opened) exits."""
        self.started()
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
        self._close_ready()

    def _close_ready(self) -> None:
        if self._ready is not None:
            os.close(self._ready)
            self._ready = None
