"""Runner processes under one supervisor: ``kubetune run`` starts ``--workers`` of them, a
runner pod ``--processes`` of them on its one device.

A process that dies has its trial re-queued and is started again; the others go on. A process
whose trial was stuck past its time or stall limit failed that trial and exits 5
(:data:`~kubetune_api.contract.TRIAL_HUNG_EXIT_CODE`): it is started again too, and not counted
as a failing process. Alone (``kubetune runner`` with one process) such a process replaces
itself (:func:`trial_runner.watchdog.replace_process`).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune_api.contract import (
    DEVICE_SHARE_ENV,
    LOCAL_WORKERS_ENV,
    SUPERVISED_ENV,
    TRIAL_HUNG_EXIT_CODE,
)
from kubetune_study.outage import is_connection_error
from kubetune_study.storage import ClaimLock, requeue_trials_of_worker
from trial_runner.cli._common import (
    EXIT_DEVICE_UNAVAILABLE,
    EXIT_INPUT,
    EXIT_OUT_OF_MEMORY,
    EXIT_TASK_LOAD,
)
from trial_runner.cli._start_gate import StartGate
from trial_runner.device import CUDA_DEVICES_ENV

__all__ = ["Supervisor"]

log = logging.getLogger("kubetune")

#: Exit codes of a runner process that stop them all: bad input, trials that kept running out
#: of memory on a shared device, a task that does not load.
FATAL_EXIT_CODES = (EXIT_INPUT, EXIT_OUT_OF_MEMORY, EXIT_TASK_LOAD, EXIT_DEVICE_UNAVAILABLE)


class Supervisor:
    """Starts runner processes, re-queues the trials of any that die and starts them again.

    ``kubetune run`` logs each process to a file in ``log_dir``; a runner pod's processes
    write to the pod's own output (``log_dir`` None). A process that exits 0 is done (the
    budget is spent); one that exits 2 (bad input) or 4 (its trials kept running out of memory
    on a shared device) stops them all, with that code in :attr:`error_code`. In a runner pod
    (``oom_kills`` > 0) a process killed by SIGKILL was killed by the kernel's out-of-memory
    killer (nothing else in a container sends it): after ``oom_kills`` of those the pod exits
    4 too.

    The processes start behind a start gate (:meth:`start` with ``gated``, see
    :mod:`._start_gate`): they load their task (``kubetune run`` sets the study up meanwhile),
    say they are ready, and claim once the gate opens, after :meth:`open_gate`. Between passes
    the supervisor sleeps until a process exits, one gets ready, or half a second passes
    (:meth:`wait`).
    """

    def __init__(
        self,
        runner_args: list[str],
        workers: int,
        name: str,
        log_dir: Path | None,
        env: Mapping[str, str] | None = None,
        oom_kills: int = 0,
        devices: Sequence[str] = (),
    ) -> None:
        self.runner_args, self.workers, self.name = runner_args, workers, name
        #: The GPUs the processes are spread over, one each in turn (``CUDA_VISIBLE_DEVICES``);
        #: with one or none, every process sees what this one sees.
        self.devices = list(devices)
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            **(env or {}),
            LOCAL_WORKERS_ENV: str(workers),
            SUPERVISED_ENV: "1",
        }
        #: What each process runs, before ``runner_args``.
        self.command = [sys.executable, "-m", "trial_runner.cli", "runner"]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self.oom_kills = oom_kills
        self.killed = 0
        #: Why supervision stopped early, and the exit code that says so.
        self.error: str | None = None
        self.error_code = EXIT_INPUT
        self._gate: StartGate | None = None

    def _log_path(self, slot: int) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{self.name}-runner-{slot}.log"

    def _spawn(self, slot: int, gate: StartGate | None = None) -> None:
        cmd = [*self.command, *self.runner_args]
        env: dict[str, str] = self.env
        if len(self.devices) > 1:
            env = {**env, CUDA_DEVICES_ENV: self.devices[slot % len(self.devices)]}
        # The processes on this one's device: each plans for its share of it.
        sharing = -(-self.workers // max(1, len(self.devices)))
        env = {**env, DEVICE_SHARE_ENV: str(sharing)}
        fds: tuple[int, ...] = ()
        if gate is not None:
            env, fds = {**env, **gate.env()}, gate.child_fds
        path = self._log_path(slot)
        if path is None:
            self.procs[slot] = subprocess.Popen(cmd, env=env, pass_fds=fds)
            return
        with open(path, "ab") as log_file:
            self.procs[slot] = subprocess.Popen(
                cmd, stdout=log_file, stderr=log_file, env=env, pass_fds=fds
            )

    def start(self, gated: bool = False) -> None:
        """Start the processes; ``gated``: they load their task, then wait for
        :meth:`open_gate`."""
        if not gated:
            for slot in range(self.workers):
                self._spawn(slot)
            return
        self._gate = gate = StartGate()
        try:
            for slot in range(self.workers):
                self._spawn(slot, gate)
                gate.add(self.procs[slot])
        finally:
            gate.started()

    def open_gate(self) -> None:
        """The study is set up: let the gated processes claim as soon as all are ready."""
        if self._gate is not None:
            self._gate.open()

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking as soon as a process exits (or, before the
        gate opens, says it is ready)."""
        pidfds = []
        ready = self._gate.wake_fds() if self._gate is not None else []
        try:
            for proc in self.procs.values():
                if proc.returncode is None:
                    try:
                        pidfds.append(os.pidfd_open(proc.pid))
                    except ProcessLookupError:
                        return  # exited and reaped meanwhile: look at it now
            select.select([*pidfds, *ready], [], [], timeout)
        finally:
            for fd in pidfds:
                os.close(fd)

    def supervise(
        self,
        study: Any,
        lock: ClaimLock,
        stop_requested: Callable[[], bool],
        each_pass: Callable[[], None] = lambda: None,
        on_outage: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        """Run the processes until all are done, one fails for good, or a stop is asked.
        The trials of a process that died are queued again under ``lock``, the study's claim
        lock.

        An unreachable storage does not end it: ``on_outage`` hears of it, and the next pass
        tries again (the runners wait the outage out too). Starts the processes unless
        :meth:`start` did."""
        if not self.procs:
            self.start()
        try:
            while not stop_requested():
                try:
                    # Exits are handled before asking whether anything still runs, so a runner
                    # that died is re-queued and replaced even when it was the last one running.
                    self.check(study, lock)
                    if self._gate is not None:
                        self._gate.poll()
                    if self.error is not None or not self.running():
                        break
                    each_pass()
                except Exception as error:
                    if not is_connection_error(error):
                        raise
                    on_outage(error)
                self.wait(0.5)
        finally:
            self.terminate()

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs.values())

    def check(self, study: Any, lock: ClaimLock) -> None:
        """Handle the processes that exited: done, failed for good, or started again."""
        from trial_runner.process import worker_id

        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or code == 0:
                continue
            if code in FATAL_EXIT_CODES:
                self._stop(self._last_error(slot, code), code)
                return
            requeued = requeue_trials_of_worker(study, worker_id(proc.pid), lock)
            if code == TRIAL_HUNG_EXIT_CODE:
                # Its trial is failed already (a failure of the task, counted as such): the
                # process is not failing, so this restart does not count toward the limit.
                log.warning("runner %d replaced: its trial was stuck past its limit", slot)
                self._spawn(slot)
                continue
            log.warning(
                "runner %d exited with %d; re-queued trials %s", slot, code, requeued or "none"
            )
            if not self._may_restart(slot, code):
                return
            self.restarts += 1
            self._spawn(slot)

    def _may_restart(self, slot: int, code: int) -> bool:
        """Whether a failed process may start again; if not, supervision stops with why."""
        if self.oom_kills and code == -signal.SIGKILL:
            self.killed += 1
            if self.killed >= self.oom_kills:
                message = (
                    f"runner processes were killed {self.killed} times, as the kernel's "
                    "out-of-memory killer does, while sharing this pod's memory"
                )
                self._stop(message, EXIT_OUT_OF_MEMORY)
                return False
        if self.restarts >= 3 * self.workers:
            self._stop(f"runners keep failing: {self._last_error(slot, code)}", EXIT_INPUT)
            return False
        return True

    def _stop(self, error: str, code: int) -> None:
        self.error, self.error_code = error, code
        self.terminate()

    def _last_error(self, slot: int, code: int) -> str:
        path = self._log_path(slot)
        if path is None:  # the process's own message is in the pod's log above
            return f"runner process {slot} exited with code {code}"
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("kubetune: ")]
        return (errors or lines or ["runner failed"])[-1].removeprefix("kubetune: ")

    def terminate(self) -> None:
        """SIGTERM to every process still running (each releases its trial), then wait."""
        if self._gate is not None:
            self._gate.close()  # a process still waiting at the gate exits
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
