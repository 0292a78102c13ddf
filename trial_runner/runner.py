"""The runner process: claim a trial, train it warm, repeat until the study's budget is spent.

One runner is one process (a pod in a cluster, a worker of ``kubetune run`` on a laptop).
Every claim happens under the study's claim lock: the runner preempts trials no runner is
running any more (:func:`~kubetune_study.preemption.release_stale_trials`), reads the study's
progress from the storage, and either starts one trial through ``study.optimize(n_trials=1)``
(so Optuna's heartbeat thread runs), waits for other runners' in-flight trials, or stops. The
lock is released as soon as the new trial exists, so training runs in parallel across runners
while counting the budget stays exact.

Preemption: each finished fold is kept with the trial (:data:`~kubetune_api.contract.FOLDS_ATTR`),
so a retry of a preempted trial resumes at its next fold. SIGTERM stops the current trial at its
next step; it is marked preempted (``Terminated``), failed and re-queued, and the process exits
0 within the grace period.

Storage outages: the runner's storage and claim lock wait an outage out for up to
``KUBETUNE_STORAGE_PATIENCE`` seconds (:mod:`kubetune_study.outage`), keeping the trial it runs.
A trial another process preempted meanwhile (its heartbeats were late) is given up, not run
twice: its retry resumes it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import optuna
from optuna.trial import TrialState

from kubetune_api.contract import (
    FAILED_ATTR,
    PREEMPTED_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WORKER_ATTR,
)
from kubetune_api.spec import HPOStudy, StudySpec
from kubetune_study.constraints import record_constraints
from kubetune_study.metrics import RunnerMetrics
from kubetune_study.outage import first_line, is_connection_error
from kubetune_study.preemption import (
    PreemptionReason,
    ResumingRetry,
    release_stale_trials,
)
from kubetune_study.progress import Claim, overclaimed, plan_claim
from kubetune_study.search import build_pruner, step_reporter, suggest_all
from kubetune_study.storage import (
    ClaimLock,
    StorageError,
    claim_lock,
    grace_period,
    open_storage,
    read_progress,
    redact,
    storage_patience,
)
from trial_runner.checkpoint import BestCheckpoint
from trial_runner.device import claim_share, device_share, pick_device
from trial_runner.engine import Engine, Interrupted
from trial_runner.process import configure_threads, install_sigterm, worker_id
from trial_runner.profile import profile_directory, trace_trial
from trial_runner.resume import TrialFolds
from trial_runner.settings import RunnerSettings
from trial_runner.stages import sampler_for_claim
from trial_runner.task import TaskLoadError, load_task
from trial_runner.trial_log import QuietPreemptedTrials, log_finished
from trial_runner.watchdog import (
    Exceeded,
    TrialLimitExceeded,
    TrialLimits,
    Watchdog,
    fail_and_replace,
)

__all__ = ["RunnerSummary", "run_runner"]

log = logging.getLogger("kubetune.runner")

# fail_stale_trials and the retry callback are marked experimental but are the documented way
# to recover trials of killed processes; the warning would repeat on every claim.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class RunnerSummary:
    trials_run: int
    stop_reason: str


def run_runner(
    study_doc: HPOStudy,
    storage_url: str,
    study_name: str,
    *,
    stop_requested: threading.Event | None = None,
    install_signal_handlers: bool = True,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    metrics: RunnerMetrics | None = None,
    before_claims: Callable[[], None] | None = None,
    settings: RunnerSettings | None = None,
) -> RunnerSummary:
    """Run trials of ``study_name`` until its budget is spent; returns why it stopped.

    Each trial this runner finishes is passed to ``on_trial`` and counted in ``metrics``.
    The task's data is loaded first, then ``before_claims`` is called (it may wait for the
    study to exist), then the storage is opened: loading overlaps whatever creates the study.
    ``settings``: by default, read from the environment now.
    """
    spec = study_doc.spec
    settings = settings or RunnerSettings.from_env()
    stop = stop_requested or threading.Event()
    # Optuna's "Trial N finished" line reads the study's best trial from the storage for every
    # trial; the runner logs its own line (:func:`~trial_runner.trial_log.log_finished`).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if install_signal_handlers:
        install_sigterm(stop)
    configure_threads()
    engine = _load_engine(spec, stop)
    if before_claims is not None:
        before_claims()
    runner = _open_runner(spec, engine, storage_url, study_name, stop, settings)
    runner.read_study()
    return _claim_until_done(runner, storage_url, on_trial, metrics)


def _load_engine(spec: StudySpec, stop: threading.Event) -> Engine:
    """The task, its data loaded: a :class:`TaskLoadError` if either fails; first the device,
    a :class:`~trial_runner.device.DeviceUnavailable` when it was given a GPU CUDA cannot use."""
    device = pick_device(spec)
    capacity = claim_share(device, device_share())
    task = load_task(spec.task.entrypoint, spec.task.config)
    try:
        return Engine(
            task,
            spec,
            device,
            stop_requested=stop,
            seed=spec.sampler.seed or 0,
            memory_capacity_bytes=capacity,
        )
    except Exception as error:  # the task's load_data, or the data it returned
        log.exception("runner %s: the task's data could not be loaded", worker_id())
        raise TaskLoadError(
            f"{spec.task.entrypoint}: loading the task's data raised {first_line(error)}"
        ) from error


def _open_runner(
    spec: StudySpec,
    engine: Engine,
    storage_url: str,
    study_name: str,
    stop: threading.Event,
    settings: RunnerSettings,
) -> _Runner:
    """The study, opened on the storage with its pruner, and the runner's claims on it."""
    storage = open_storage(storage_url, patience=storage_patience())
    study = optuna.load_study(study_name=study_name, storage=storage)
    log.info(
        "runner %s: data loaded in %.2fs on %s; study %s",
        worker_id(),
        engine.setup_seconds,
        engine.device,
        study_name,
    )
    study.pruner = build_pruner(spec)
    checkpoint = spec.training.checkpoint
    return _Runner(
        spec,
        study,
        engine,
        claim_lock(storage_url, study_name, patience=storage_patience()),
        stop,
        BestCheckpoint(Path(checkpoint.directory), spec.primary_objective) if checkpoint else None,
        profile_directory(spec.training, study_name),
        settings,
    )


def _claim_until_done(
    runner: _Runner,
    storage_url: str,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None,
    metrics: RunnerMetrics | None,
) -> RunnerSummary:
    """Claim and run trials until the study says stop or a stop is asked."""
    trials_run = 0
    while True:
        if runner.stop.is_set():
            return RunnerSummary(trials_run, "Interrupted")
        try:
            step = runner.claim_and_run()
        except optuna.exceptions.UpdateFinishedTrialError as error:
            # Another process preempted this runner's trial (its heartbeats were late, e.g.
            # through a storage outage): its retry resumes it; running it on would run it twice.
            log.warning("runner %s: its trial was preempted elsewhere (%s)", runner.me, error)
            continue
        except Exception as error:
            if is_connection_error(error):
                raise StorageError(
                    f"storage {redact(storage_url)} unreachable for "
                    f"{storage_patience():.0f}s: {first_line(error)}"
                ) from None
            raise
        if step.ran:
            trials_run += 1
        if step.trial is not None:
            if metrics is not None:
                metrics.record(step.trial)
            if on_trial is not None:
                on_trial(step.trial)
        if step.stop is not None:
            return RunnerSummary(trials_run, step.stop)


@dataclass(frozen=True)
class _Step:
    ran: bool = False
    trial: optuna.trial.FrozenTrial | None = None
    stop: str | None = None  # why the runner stops, if it does


class Preempted(Exception):
    """The trial's runner is stopping (SIGTERM) or lost its claim: not the task's failure."""


class _Runner:
    """One runner's claims: the study, its engine, the claim lock and the stop event."""

    def __init__(
        self,
        spec: StudySpec,
        study: optuna.Study,
        engine: Engine,
        lock: ClaimLock,
        stop: threading.Event,
        checkpoint: BestCheckpoint | None,
        profiles: Path,
        settings: RunnerSettings | None = None,
    ) -> None:
        self.spec, self.study, self.engine, self.lock = spec, study, engine, lock
        self.stop, self.checkpoint, self.profiles = stop, checkpoint, profiles
        self.settings = settings or RunnerSettings.from_env()
        self.me = worker_id()
        self._quiet = QuietPreemptedTrials.install()
        limits = TrialLimits.from_budget(spec.budget, stall_floor=self.settings.stall_floor)
        self.watchdog = Watchdog(limits, grace=self.settings.limit_grace)
        # Orphaned claims (ClaimInterrupted) take a grace period to qualify: looking for them
        # once per half grace period finds each as soon as it does, give or take half of one.
        self._orphans_swept = -float("inf")

    def read_study(self) -> None:
        """Read the whole study once, before the first claim: the storage's cache and the
        progress tally then hold it, and every read under the claim lock is incremental. A
        runner joining a large study used to make this read under the lock, holding up every
        other runner's claims for as long as it took."""
        read_progress(self.study, self.spec)

    def claim_and_run(self) -> _Step:
        """Under the claim lock: release stale trials, then run one trial, wait, or stop."""
        spec, study = self.spec, self.study
        self.lock.acquire()
        try:
            now = time.monotonic()
            orphans = now - self._orphans_swept >= grace_period() / 2
            release_stale_trials(study, grace_period(), self.lock, orphans=orphans)
            if orphans:
                self._orphans_swept = now
            progress = read_progress(study, spec)
            claim = plan_claim(progress)
            if claim.action == "Stop":
                log.info("runner %s stops: %s", self.me, claim.reason)
                return _Step(stop=claim.reason)
            if claim.action == "Wait":
                self.lock.release()
                self.stop.wait(self.settings.wait_seconds)
                return _Step()
            study.sampler = sampler_for_claim(spec, progress, claim)
            trial_ids: list[int] = []

            def objective(trial: optuna.Trial) -> float | Sequence[float]:
                trial_ids.append(trial._trial_id)
                return self._objective(trial, claim)

            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            if not trial_ids:
                return _Step(ran=True)
            # This one trial, not the study's list (a finished trial is read from the cache).
            frozen = study._storage.get_trial(trial_ids[0])
            terminated = (
                frozen.state == TrialState.FAIL
                and frozen.user_attrs.get(PREEMPTED_ATTR) == "Terminated"
            )
            if terminated:
                # Failed under the claim lock (taken back by _preempted), and queued again
                # before it is released: no claim sees the budget without this trial.
                ResumingRetry()(study, frozen)
        finally:
            self.lock.release()
        log_finished(frozen)
        if frozen.state != TrialState.COMPLETE:
            # Optuna keeps a pruned or failed trial's exception in a reference cycle (its
            # traceback's frames hold the model, its optimizer state and activations) that only
            # the cyclic collector frees; on a GPU that memory must be back before the next
            # trial plans its batches. Complete trials leave no cycle: no collection for them.
            gc.collect()
        if terminated:
            log.info("runner %s interrupted: trial %d re-queued", self.me, frozen.number)
            return _Step(ran=True, stop="Interrupted")
        return _Step(ran=True, trial=frozen)

    def _objective(self, trial: optuna.Trial, claim: Claim) -> float | Sequence[float]:
        spec = self.spec
        stage = int(trial.user_attrs.get(STAGE_ATTR, claim.stage))
        trial.set_user_attr(STAGE_ATTR, stage)
        trial.set_user_attr(WORKER_ATTR, self.me)
        self._check_claim(trial)
        self.lock.release()  # the trial exists: other runners may claim now
        params = suggest_all(trial, spec)
        folds = TrialFolds(trial, spec.training.folds)
        # The trial, or with several objectives their vectors (kubetune_study.mo_pruning).
        reporter = step_reporter(trial, spec)
        engine = self.engine
        trial_id, storage = trial._trial_id, self.study._storage

        def hung(exceeded: Exceeded) -> NoReturn:
            fail_and_replace(storage, trial_id, trial.number, exceeded)

        try:
            with (
                trace_trial(
                    trial,
                    spec.training.profile,
                    self.profiles,
                    engine.device,
                    engine.trials_run,
                    self.me,
                ),
                self.watchdog.watch(trial.number, hung) as on_step,
            ):
                result = engine.run_trial(
                    params,
                    # A retry trains as the trial it resumes would have: same epochs, seeds.
                    trial_number=folds.origin if folds.origin is not None else trial.number,
                    reporter=reporter,
                    resume=folds.resume,
                    on_fold=folds.keep,
                    on_step=on_step,
                )
        except Interrupted:
            self._preempted(trial, "Terminated")
        except TrialLimitExceeded as limit:
            # Optuna fails the trial with the exception; the reason is kept with it.
            trial.set_user_attr(FAILED_ATTR, limit.exceeded.reason)
            self._quiet.numbers.add(trial.number)
            log.warning(
                "trial %d failed (%s): %s", trial.number, limit.exceeded.reason, limit.exceeded
            )
            raise
        # One attribute, one storage write: the telemetry and the task's metrics.
        trial.set_user_attr(TELEMETRY_ATTR, {**result.telemetry, "metrics": result.metrics})
        if result.pruned:
            raise optuna.TrialPruned(result.stop_reason)
        feasible = record_constraints(trial, spec, result.metrics)
        if self.checkpoint is not None and result.model is not None and feasible:
            self.checkpoint.offer(trial.number, result.value, result.model, params)
        if spec.multi_objective:
            return [result.metrics[o.metric] for o in spec.all_objectives]
        return result.value

    def _check_claim(self, trial: optuna.Trial) -> None:
        """Give the trial up if the claim lock was lost while claiming it and the study is now
        over its budget: another runner claimed at the same time."""
        if self.lock.held():
            return
        # The lock's connection broke: PostgreSQL released the lock with the session.
        self.lock.acquire()
        if overclaimed(read_progress(self.study, self.spec)):
            log.warning("trial %d: claimed twice over a lost claim lock; given up", trial.number)
            self._preempted(trial, "ClaimInterrupted")

    def _preempted(self, trial: optuna.Trial, reason: PreemptionReason) -> NoReturn:
        """Give the trial up as preempted (Optuna fails it as the exception leaves the
        objective). A ``Terminated`` trial is queued again: the claim lock is taken back first,
        so that its failure and its retry land under it (see
        :func:`~kubetune_study.preemption.preempt`)."""
        trial.set_user_attr(PREEMPTED_ATTR, reason)
        self._quiet.numbers.add(trial.number)
        if reason == "Terminated":
            self.lock.acquire()
        raise Preempted(reason)
