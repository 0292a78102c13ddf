"""Trial time and stall limits: a trial that runs too long or stops making steps ends Failed.

A trial runs in its runner process's main thread, and a thread stuck in a call that never
returns (a deadlocked DataLoader, a collective waiting for a peer that is gone, a step that
never comes back) cannot be interrupted. So one watchdog thread per runner process keeps the
limits (``budget.trialTimeout`` and ``budget.stallTimeout``), in two stages:

1. At the trial's next step: once the trial is past a limit, the next training or validation
   step that finishes raises :class:`TrialLimitExceeded` in the trial's thread; the runner
   fails the trial with the reason (:data:`~kubetune_api.contract.FAILED_ATTR`) and claims the
   next one in the same warm process.
2. From outside: when no step finishes within ``KUBETUNE_TRIAL_LIMIT_GRACE`` seconds (30)
   after that, the watchdog fails the trial in the storage itself, with the same reason, and
   replaces the process (:func:`replace_process`). The trial is failed before its heartbeats
   stop, so no stale-trial sweep preempts or re-queues it; the trial's thread cannot fail it
   too (it would have to take the watchdog's lock, which the watchdog keeps until the process
   is gone).

The stall limit, ``Auto`` (the default), follows the trial's own step times. A step's time is
the time since the trial's previous step finished (for its first step, the step's own run,
compilation and warm-up included), and the runner process remembers the slowest of all its
trials' steps. Then:

* before a trial's first step finishes: the larger of 30 minutes (6 × the floor) and 10 times
  the longest any earlier trial of the process waited for its first step (building the model,
  compiling, the first batch);
* after it: the larger of 5 minutes (the floor) and 10 times the slowest step the process has
  seen, this trial's included.

A trial that is merely slow keeps making steps and never stalls; one whose step never returns
stalls after at most the floor or ten of its slowest steps. The floor is
``KUBETUNE_STALL_FLOOR`` seconds (300).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

from optuna.storages import BaseStorage

from kubetune_api.contract import (
    FAILED_ATTR,
    SUPERVISED_ENV,
    TRIAL_HUNG_EXIT_CODE,
    TrialLimitReason,
)
from kubetune_api.spec import Budget
from kubetune_study.outage import first_line
from kubetune_study.preemption import mark_failed

__all__ = [
    "AUTO_STALL_MULTIPLE",
    "FIRST_STEP_FLOORS",
    "LIMIT_GRACE",
    "STALL_FLOOR",
    "Exceeded",
    "StepTimes",
    "TrialClock",
    "TrialLimitExceeded",
    "TrialLimits",
    "Watchdog",
    "auto_stall_limit",
    "fail_and_replace",
    "replace_process",
]

log = logging.getLogger("kubetune.watchdog")

#: The Auto stall limit is this many times the slowest step seen.
AUTO_STALL_MULTIPLE = 10
#: Before a trial's first step, the Auto stall limit's floor is this many floors.
FIRST_STEP_FLOORS = 6
#: Seconds: the Auto stall limit is never shorter (a runner reads ``KUBETUNE_STALL_FLOOR``
#: when it starts: :class:`trial_runner.settings.RunnerSettings`).
STALL_FLOOR = 300.0
#: Seconds a trial past a limit has to stop at its next step before it is ended from outside
#: (a runner reads ``KUBETUNE_TRIAL_LIMIT_GRACE`` when it starts).
LIMIT_GRACE = 30.0
#: Seconds between the watchdog's looks at the trial.
POLL_SECONDS = 0.5


def auto_stall_limit(slowest: float | None, *, first_step: bool, floor: float) -> float:
    """The Auto stall limit (see the module docstring): ``slowest`` is the slowest first step
    of earlier trials when ``first_step``, else the slowest step (``None``: none seen yet)."""
    least = floor * FIRST_STEP_FLOORS if first_step else floor
    return least if slowest is None else max(least, AUTO_STALL_MULTIPLE * slowest)


@dataclass
class StepTimes:
    """What one runner process has seen of its trials' steps (seconds)."""

    slowest: float | None = None  # step, measured as the module docstring says
    slowest_first: float | None = None  # wait from a trial's start to its first step's end


@dataclass
class TrialClock:
    """One trial's times (``time.perf_counter()`` seconds)."""

    started: float
    last_step: float | None = None  # when its latest step finished


@dataclass(frozen=True)
class Exceeded:
    """A limit a trial went past, and a sentence that says so."""

    reason: TrialLimitReason
    message: str


@dataclass(frozen=True)
class TrialLimits:
    """A study's limits on each trial (seconds; ``stall_timeout`` ``None``: Auto)."""

    trial_timeout: float | None
    stall_timeout: float | None
    stall_floor: float = STALL_FLOOR

    @classmethod
    def from_budget(cls, budget: Budget, stall_floor: float = STALL_FLOOR) -> TrialLimits:
        return cls(budget.trial_timeout_seconds, budget.stall_timeout_seconds, stall_floor)

    def stall_limit(self, steps: StepTimes, *, first_step: bool) -> float:
        if self.stall_timeout is not None:
            return self.stall_timeout
        slowest = steps.slowest_first if first_step else steps.slowest
        return auto_stall_limit(slowest, first_step=first_step, floor=self.stall_floor)

    def exceeded(self, clock: TrialClock, steps: StepTimes, now: float) -> Exceeded | None:
        """Which limit the trial is past at ``now``, if any (its time limit first)."""
        ran = now - clock.started
        if self.trial_timeout is not None and ran > self.trial_timeout:
            return Exceeded(
                "TrialTimeout",
                f"ran {ran:.1f}s, longer than budget.trialTimeout ({self.trial_timeout:g}s)",
            )
        first_step = clock.last_step is None
        idle = now - (clock.started if clock.last_step is None else clock.last_step)
        limit = self.stall_limit(steps, first_step=first_step)
        if idle > limit:
            rule = "Auto" if self.stall_timeout is None else "budget.stallTimeout"
            what = "its first step" if first_step else "a step"
            return Exceeded(
                "Stalled", f"{what} did not finish in {idle:.1f}s (stall limit {limit:g}s, {rule})"
            )
        return None


class TrialLimitExceeded(Exception):
    """Raised at a step of a trial that is past its time or stall limit."""

    def __init__(self, exceeded: Exceeded) -> None:
        super().__init__(exceeded.message)
        self.exceeded = exceeded


@dataclass
class _Watched:
    number: int
    clock: TrialClock
    on_hung: Callable[[Exceeded], NoReturn]
    exceeded: Exceeded | None = None
    flagged_at: float = 0.0


class Watchdog:
    """Keeps one runner process's trials (one at a time) within their limits.

    :meth:`watch` wraps a trial: the step callback it yields records each finished step and
    raises :class:`TrialLimitExceeded` once the trial is past a limit; a trial that takes no
    step for ``grace`` seconds after that is handed to its ``on_hung`` from the watchdog's
    thread, which must end the process (:func:`replace_process`).
    """

    def __init__(self, limits: TrialLimits, *, grace: float = LIMIT_GRACE) -> None:
        self.limits = limits
        self.grace = grace
        self.steps = StepTimes()
        self._lock = threading.Lock()
        self._trial: _Watched | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(
        self, number: int, on_hung: Callable[[Exceeded], NoReturn]
    ) -> Iterator[Callable[[float], None]]:
        """Watch trial ``number`` for the block; yields the callback for each finished step
        (called with the ``time.perf_counter()`` at which that step started)."""
        with self._lock:
            self._trial = _Watched(number, TrialClock(time.perf_counter()), on_hung)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubetune-watchdog", daemon=True)
            self._thread.start()
        try:
            yield self._step_done
        finally:
            # Once the watchdog ends the trial from outside it keeps the lock until the process
            # is gone: this thread then waits here and never fails the trial a second time.
            with self._lock:
                self._trial = None

    def _step_done(self, started: float) -> None:
        now = time.perf_counter()
        with self._lock:
            trial = self._trial
            if trial is None:
                return
            exceeded = trial.exceeded or self.limits.exceeded(trial.clock, self.steps, now)
            if exceeded is not None:
                self._trial = None  # this thread ends the trial: the watchdog no longer may
            else:
                self._record(trial.clock, started, now)
        if exceeded is not None:
            raise TrialLimitExceeded(exceeded)

    def _record(self, clock: TrialClock, started: float, now: float) -> None:
        steps = self.steps
        if clock.last_step is None:
            waited = now - clock.started
            steps.slowest_first = max(steps.slowest_first or 0.0, waited)
        took = now - (started if clock.last_step is None else clock.last_step)
        steps.slowest = max(steps.slowest or 0.0, took)
        clock.last_step = now

    def _run(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            self._look()

    def _look(self) -> None:
        with self._lock:
            trial = self._trial
            if trial is None:
                return
            now = time.perf_counter()
            if trial.exceeded is None:
                trial.exceeded = self.limits.exceeded(trial.clock, self.steps, now)
                if trial.exceeded is not None:
                    trial.flagged_at = now
                    log.warning(
                        "trial %d: %s; it ends at its next step",
                        trial.number,
                        trial.exceeded.message,
                    )
                return
            if now - trial.flagged_at < self.grace:
                return
            log.error(
                "trial %d: no step finished within %gs of its %s: failing it and replacing "
                "this runner process",
                trial.number,
                self.grace,
                trial.exceeded.reason,
            )
            self._trial = None  # the watchdog ends the trial: its thread no longer may
            trial.on_hung(trial.exceeded)  # never returns: the lock stays held


def fail_and_replace(
    storage: BaseStorage, trial_id: int, number: int, exceeded: Exceeded
) -> NoReturn:
    """From the watchdog's thread: the trial's thread is stuck past its limit. Fail the trial
    with the reason (while its heartbeats still run, so no sweep preempts it) and replace this
    process."""
    try:
        if mark_failed(storage, trial_id, FAILED_ATTR, exceeded.reason):
            log.error("trial %d failed (%s): %s", number, exceeded.reason, exceeded.message)
    except Exception as error:  # its runner's exit makes it preempted instead: not lost
        log.error("trial %d could not be failed (%s)", number, first_line(error))
    replace_process()


def replace_process() -> NoReturn:
    """End this runner process for a fresh one, its stuck threads with it.

    Under a supervisor (:data:`~kubetune_api.contract.SUPERVISED_ENV`) the process exits with
    :data:`~kubetune_api.contract.TRIAL_HUNG_EXIT_CODE` and the supervisor starts another. Alone
    (a runner pod with one process) it executes its own command again in place: same process,
    same pod, its data loaded again; its children (DataLoader workers) are ended first, since
    they would not see their parent go.
    """
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get(SUPERVISED_ENV):
        os._exit(TRIAL_HUNG_EXIT_CODE)
    for child in multiprocessing.active_children():
        child.kill()
    # Nothing this process opened goes with it, whatever a library's flags on it.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError:
        os._exit(TRIAL_HUNG_EXIT_CODE)
