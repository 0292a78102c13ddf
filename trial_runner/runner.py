"""The runner process: claim a trial, train it warm, repeat until the study's budget is spent.

One runner is one process (a pod in a cluster, a worker of ``kubetune run`` on a laptop).
Every claim happens under the study's claim lock: the runner fails stale trials (heartbeats),
reads the study's progress from the storage, and either starts one trial through
``study.optimize(n_trials=1)`` (so Optuna's heartbeat thread runs), waits for other runners'
in-flight trials, or stops. The lock is released as soon as the new trial exists, so training
runs in parallel across runners while counting the budget stays exact.

SIGTERM: the current trial stops at its next step, is failed and re-queued as WAITING
(the same retry a heartbeat-stale trial gets), and the process exits 0 within the grace
period.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from trial_runner.checkpoint import BestCheckpoint
from trial_runner.contract import (
    CPU_THREADS_ENV,
    LOCAL_WORKERS_ENV,
    PROFILE_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WAIT_SECONDS_ENV,
    WORKER_ATTR,
)
from trial_runner.engine import Engine
from trial_runner.metrics import RunnerMetrics
from trial_runner.profile import profile_directory, record_trace, should_profile, trace_path
from trial_runner.progress import Claim, StudyProgress, plan_claim
from trial_runner.search import build_pruner, build_sampler, fixed_params_for_stage, suggest_all
from trial_runner.spec import HPOStudy, Objective, best_first_key
from trial_runner.storage import MAX_RETRY, ClaimLock, open_storage, read_progress
from trial_runner.task import load_task_class

__all__ = ["RunnerSummary", "configure_threads", "run_runner", "wait_for_study", "worker_id"]

log = logging.getLogger("kubetune.runner")

# fail_stale_trials and the retry callback are marked experimental but are the documented way
# to recover trials of killed processes; the warning would repeat on every claim.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

WAIT_SECONDS = float(os.environ.get(WAIT_SECONDS_ENV, "2"))


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


@dataclass
class RunnerSummary:
    trials_run: int
    stop_reason: str


def configure_threads() -> int:
    """Intra-op threads: the CPUs this process may use divided among local runners.

    Small models gain nothing from many intra-op threads, and oversubscribed OpenMP threads
    spin; several runner processes share the machine instead.
    """
    import torch

    explicit = os.environ.get(CPU_THREADS_ENV)
    if explicit:
        threads = max(1, int(explicit))
    else:
        usable = len(os.sched_getaffinity(0))
        local = max(1, int(os.environ.get(LOCAL_WORKERS_ENV, "1")))
        threads = max(1, usable // local)
    torch.set_num_threads(threads)
    return threads


def run_runner(
    study_doc: HPOStudy,
    storage_url: str,
    study_name: str,
    *,
    stop_requested: threading.Event | None = None,
    install_signal_handlers: bool = True,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    metrics: RunnerMetrics | None = None,
) -> RunnerSummary:
    """Run trials of ``study_name`` until its budget is spent; returns why it stopped.

    Each trial this runner finishes is passed to ``on_trial`` and counted in ``metrics``.
    """
    spec = study_doc.spec
    stop = stop_requested or threading.Event()
    if install_signal_handlers:
        _install_sigterm(stop)
    configure_threads()
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    task = load_task_class(spec.task.entrypoint)(spec.task.config)
    engine = Engine(task, spec, stop_requested=stop, seed=spec.sampler.seed or 0)
    log.info(
        "runner %s: data loaded in %.2fs on %s; study %s",
        worker_id(),
        engine.setup_seconds,
        engine.device,
        study_name,
    )
    pruner = build_pruner(spec)
    study.pruner = pruner
    checkpoint = (
        BestCheckpoint(Path(spec.training.checkpoint.directory), spec.primary_objective)
        if spec.training.checkpoint
        else None
    )
    lock = ClaimLock(storage_url, study_name)
    me = worker_id()
    trials_run = 0
    profiles = profile_directory(spec.training, study_name)

    while True:
        if stop.is_set():
            return RunnerSummary(trials_run, "Interrupted")
        lock.acquire()
        try:
            fail_stale_trials(study)
            progress = read_progress(study, spec)
            claim = plan_claim(progress)
            if claim.action == "Stop":
                log.info("runner %s stops: %s", me, claim.reason)
                return RunnerSummary(trials_run, claim.reason)
            if claim.action == "Wait":
                lock.release()
                stop.wait(WAIT_SECONDS)
                continue
            best_earlier = _best_params_before(progress, claim, spec.all_objectives)
            study.sampler = build_sampler(
                spec.sampler,
                seed_offset=len(study.get_trials(deepcopy=False)),
                fixed=fixed_params_for_stage(spec, claim.stage, best_earlier),
            )
            current: dict[str, Any] = {}

            def objective(
                trial: optuna.Trial, claim: Claim = claim, current: dict[str, Any] = current
            ) -> float | Sequence[float]:
                current["number"] = trial.number
                stage = int(trial.user_attrs.get(STAGE_ATTR, claim.stage))
                trial.set_user_attr(STAGE_ATTR, stage)
                trial.set_user_attr(WORKER_ATTR, me)
                lock.release()  # the trial exists: other runners may claim now
                params = suggest_all(trial, spec)
                # Optuna prunes single-objective trials only; the spec allows no pruner with
                # several objectives, so their trials report nothing.
                reporter = None if spec.multi_objective else trial
                traced = should_profile(spec.training.profile, trial.number, engine.trials_run)
                trace = trace_path(profiles, trial.number, me)
                try:
                    tracing = record_trace(trace, engine.device) if traced else nullcontext()
                    with tracing:
                        result = engine.run_trial(
                            params, trial_number=trial.number, reporter=reporter
                        )
                finally:
                    if traced and trace.is_file():
                        trial.set_user_attr(PROFILE_ATTR, str(trace.resolve()))
                # One attribute, one storage write: the telemetry and the task's metrics.
                trial.set_user_attr(TELEMETRY_ATTR, {**result.telemetry, "metrics": result.metrics})
                if result.pruned:
                    raise optuna.TrialPruned(result.stop_reason)
                if checkpoint is not None and result.model is not None:
                    checkpoint.offer(trial.number, result.value, result.model, params)
                if spec.multi_objective:
                    return [result.metrics[o.metric] for o in spec.all_objectives]
                return result.value

            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        finally:
            lock.release()
        trials_run += 1
        number = current.get("number")
        if number is not None:
            frozen = study.get_trials(deepcopy=False)[number]
            if stop.is_set() and frozen.state == TrialState.FAIL:
                _requeue(study, frozen)
                log.info("runner %s interrupted: trial %d re-queued", me, number)
                return RunnerSummary(trials_run, "Interrupted")
            if metrics is not None:
                metrics.record(frozen)
            if on_trial is not None:
                on_trial(frozen)


def _best_params_before(
    progress: StudyProgress, claim: Claim, objectives: Objective | Sequence[Objective]
) -> dict[str, Any] | None:
    """Parameters of the best trial of the stages before the claimed one (the first of
    equals; with several objectives, best by the first objective, ties by the next)."""
    listed = [objectives] if isinstance(objectives, Objective) else list(objectives)
    directions = [o.direction for o in listed]
    best: tuple[tuple[float, ...], dict[str, Any]] | None = None
    for row in progress.stages[: claim.stage]:
        if row.best_values is None or row.best_params is None:
            continue
        key = best_first_key(directions, row.best_values)
        if best is None or key < best[0]:
            best = (key, row.best_params)
    return best[1] if best else None


def _requeue(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


def _install_sigterm(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then releasing the trial", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_for_study(storage_url: str, study_name: str, timeout: float = 60.0) -> None:
    """Block until the study exists (the operator may still be creating it)."""
    storage = open_storage(storage_url, heartbeat=False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            storage.get_study_id_from_name(study_name)
            return
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
