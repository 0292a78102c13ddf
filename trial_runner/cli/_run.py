"""``kubetune run``: a study on this machine, with ``--workers`` runner processes (default
``resources.parallelism``, the trials that run at once) under a
:class:`~._supervisor.Supervisor`.

The runners start at once and load their task behind the start gate (:mod:`._start_gate`)
while this process sets the study up (:func:`_set_up`); then it shows the study's progress
(:mod:`._progress_view`) until the budget is spent, the study fails, or it is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubetune_api.spec import Runner, StudySpec, load_study
from kubetune_study.outage import first_line
from kubetune_study.progress import StudyProgress
from kubetune_study.pruning import describe as describe_pruning
from kubetune_study.search import max_pruning_steps
from kubetune_study.storage import (
    ClaimLock,
    budget_from_spec,
    claim_lock,
    ensure_study,
    open_storage,
    read_progress,
    redact,
    storage_patience,
    write_budget,
)
from kubetune_study.warmstart import WarmStartReport, apply_warm_start, source_study_name
from trial_runner.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STUDY_FAILED,
    CliError,
    fmt,
    storage_and_name,
)
from trial_runner.cli._progress_view import ProgressView, print_front
from trial_runner.cli._supervisor import Supervisor
from trial_runner.device import visible_gpus
from trial_runner.entrypoints import check_entrypoint

__all__ = ["cmd_run", "default_workers"]


def cmd_run(args: argparse.Namespace) -> int:
    study_doc = load_study(args.study)
    spec = study_doc.spec
    url, name = storage_and_name(args, study_doc)
    workers = _check_run_args(args, spec)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    runner_args = ["--study-name", name, "--storage", url, args.study]
    # Several GPUs on this machine: the workers take them in turn.
    supervisor = Supervisor(runner_args, workers, name, log_dir, devices=visible_gpus())
    # The runners start now and load their task (an interpreter, torch, the data, the memory
    # estimate: most of a run's start-up) while this process sets the study up; they claim
    # nothing until the gate opens.
    supervisor.start(gated=True)
    try:
        study, warm_start = _set_up(args, spec, url, name, workers)
    except BaseException:
        supervisor.terminate()
        raise
    supervisor.open_gate()
    if warm_start is not None:
        print(warm_start.summary(), flush=True)
    view = ProgressView(enabled=not args.no_progress, multi_objective=spec.multi_objective)
    # Taken only when a dead runner's trials are queued again.
    with contextlib.closing(claim_lock(url, name, patience=storage_patience())) as lock:
        interrupted = _supervise(spec, study, lock, supervisor, view)
    progress = read_progress(study, spec)
    view.final(progress)
    return _print_outcome(progress, spec, interrupted, log_dir)


def _check_run_args(args: argparse.Namespace, spec: StudySpec) -> int:
    """The flags and the study's entrypoint, checked before the storage is touched (so a typo
    changes nothing); returns the runner processes to start."""
    workers: int = args.workers if args.workers is not None else default_workers(spec)
    if workers < 1:
        raise CliError("--workers: must be at least 1")
    if args.trials is not None and args.trials < 1:
        raise CliError("--trials: must be at least 1")
    check_entrypoint(spec.task.entrypoint)
    if spec.runner != Runner():
        print(
            "note: spec.runner (the pod template, /dev/shm) applies to runner pods on a cluster "
            "only; this run uses this machine as it is",
            flush=True,
        )
    return workers


def _supervise(
    spec: StudySpec, study: Any, lock: ClaimLock, supervisor: Supervisor, view: ProgressView
) -> bool:
    """Supervise the runners, showing the study's progress; returns whether a signal
    interrupted the run."""
    interrupted = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        supervisor.supervise(
            study,
            lock,
            lambda: interrupted,
            lambda: view.update(read_progress(study, spec)),
            # The runners wait an outage out and keep their trials; so does this view.
            on_outage=lambda error: view.outage(first_line(error)),
        )
    finally:
        view.close()
    if supervisor.error is not None:
        raise CliError(supervisor.error, supervisor.error_code)
    return interrupted


def _print_outcome(
    progress: StudyProgress, spec: StudySpec, interrupted: bool, log_dir: Path
) -> int:
    """The best trial (or the Pareto front) and how the run ended; returns the exit code."""
    if interrupted:
        print("interrupted: the study is kept; run the same command to continue")
        return EXIT_INTERRUPTED
    if progress.best_params is not None:
        print(f"best value: {fmt(progress.best_value)} (trial {progress.best_trial})")
        print("best params:")
        for key, value in progress.best_params.items():
            print(f"  {key}: {value}")
    if progress.pareto_front:
        print_front(progress, spec)
    if progress.failure is not None:
        print(f"study failed: {progress.failure} (logs: {log_dir})")
        return EXIT_STUDY_FAILED
    return EXIT_OK


def _set_up(
    args: argparse.Namespace, spec: StudySpec, url: str, name: str, workers: int
) -> tuple[Any, WarmStartReport | None]:
    """Create or load the study, write ``--trials`` as its budget, apply the warm start."""
    storage = open_storage(url, heartbeat=False)
    study = ensure_study(storage, name, spec)
    if args.trials is not None:
        budget = budget_from_spec(spec)
        stages = _scaled_stages(budget.stage_trials, args.trials)
        write_budget(study, replace(budget, max_trials=args.trials, stage_trials=stages))
    print(f"study {name!r}: storage {redact(url)}, {workers} runner process(es)", flush=True)
    if spec.pruner.type != "Nop":
        print(describe_pruning(spec, max_pruning_steps(spec)), flush=True)
    # After the budget (a warm start queues only what the budget leaves room for); local
    # studies are named after their HPOStudy, so hpoStudy names the source as it is.
    return study, apply_warm_start(study, spec, url, source_study_name(spec))


def default_workers(spec: StudySpec) -> int:
    """``kubetune run``'s runner processes without ``--workers``: the trials the study runs at
    once (``resources.parallelism``), as on a cluster."""
    return spec.resources.parallelism


def _scaled_stages(stages: tuple[int | None, ...], trials: int) -> tuple[int | None, ...]:
    """Stage quotas for ``--trials``: proportional, the last stage taking the rest."""
    if not stages:
        return ()
    fixed = [t or 0 for t in stages]
    total = sum(fixed) or 1
    scaled: list[int | None] = [max(1, round(t * trials / total)) for t in fixed[:-1]]
    return (*scaled, None)
