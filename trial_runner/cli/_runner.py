"""``kubetune runner``: what a runner pod runs, trials of an existing study until its budget is
spent; one process, or ``--processes N`` of them on the pod's one device under a
:class:`~._supervisor.Supervisor`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING

from kubetune_api.contract import METRICS_PORT_ENV, START_GATE_FD_ENV
from kubetune_api.spec import HPOStudy
from kubetune_study.storage import claim_lock, open_storage, redact, storage_patience
from trial_runner.cli._common import (
    EXIT_DEVICE_UNAVAILABLE,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_STORAGE,
    EXIT_TASK_LOAD,
    CliError,
    load_study_or_env,
    storage_and_name,
)
from trial_runner.cli._oom_guard import OUT_OF_MEMORY_TRIALS, OutOfMemoryGuard
from trial_runner.cli._pod import (
    MULTIPROCESS_DIR_ENV,
    metrics_port,
    on_termination,
    serve_process_metrics,
)
from trial_runner.cli._start_gate import wait_for_start_gate
from trial_runner.cli._supervisor import Supervisor

if TYPE_CHECKING:
    from kubetune_study.metrics import RunnerMetrics

__all__ = ["cmd_runner"]

log = logging.getLogger("kubetune")


def cmd_runner(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise CliError("--processes: must be at least 1")
    if args.exit_after_oom_trials < 0:
        raise CliError("--exit-after-oom-trials: must be 0 (never) or more")
    if args.processes > 1:
        return _run_processes(args)
    from trial_runner.device import DeviceUnavailable
    from trial_runner.runner import run_runner
    from trial_runner.task import TaskLoadError

    study = load_study_or_env(args.study)
    url, name = storage_and_name(args, study)
    port = metrics_port()
    # Nothing to wait for (no gate, no patience): a missing study is said at once, before the
    # task loads.
    study_first = START_GATE_FD_ENV not in os.environ and args.wait_for_study <= 0
    if study_first:
        _wait_for_study(url, name, args.wait_for_study)

    def before_claims() -> None:
        """After the task's data is loaded: wait for ``kubetune run`` (when it started this
        process), then for the study."""
        wait_for_start_gate()
        if not study_first:
            _wait_for_study(url, name, args.wait_for_study)

    stop = threading.Event()
    guard = OutOfMemoryGuard(args.exit_after_oom_trials, stop)
    try:
        summary = run_runner(
            study,
            url,
            name,
            metrics=_runner_metrics(study, port),
            stop_requested=stop,
            on_trial=guard,
            before_claims=before_claims,
        )
    except TaskLoadError as exc:
        raise CliError(str(exc), EXIT_TASK_LOAD) from None
    except DeviceUnavailable as exc:
        raise CliError(str(exc), EXIT_DEVICE_UNAVAILABLE) from None
    log.info("runner done: %d trial(s), %s", summary.trials_run, summary.stop_reason)
    if guard.tripped:
        raise CliError(
            f"{guard.count} trials of this runner process ran out of memory while other runner "
            "processes shared its device; stopping so that fewer share it",
            EXIT_OUT_OF_MEMORY,
        )
    return EXIT_OK


def _runner_metrics(study: HPOStudy, port: int | None) -> RunnerMetrics | None:
    """The runner's metrics, served on ``port`` when given."""
    from kubetune_study.metrics import RunnerMetrics, start_metrics_server

    metrics = None
    if port is not None or os.environ.get(MULTIPROCESS_DIR_ENV):
        # Alone, the runner serves its metrics; one of a pod's processes records them for
        # the pod's supervisor to serve.
        metrics = RunnerMetrics(study.metadata.namespace or "", study.name)
    if port is not None:
        start_metrics_server(port)
    return metrics


def _wait_for_study(url: str, name: str, timeout: float) -> None:
    from trial_runner.process import wait_for_study

    try:
        wait_for_study(url, name, timeout=timeout)
    except KeyError:
        raise CliError(
            f"no study named {name!r} in {redact(url)} after {timeout:g}s: a runner joins a "
            "study that exists; create it with `kubetune run` on the same storage (or apply the "
            "HPOStudy for the operator to create)",
            EXIT_STORAGE,
        ) from None


def _run_processes(args: argparse.Namespace) -> int:
    """``kubetune runner --processes N``: N runner processes of one pod on its one device."""
    import optuna

    study_doc = load_study_or_env(args.study)  # a bad spec fails here, not N times
    url, name = storage_and_name(args, study_doc)
    _wait_for_study(url, name, args.wait_for_study)
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    env: dict[str, str] = {}
    port = metrics_port()
    directory = None
    if port is not None:
        # The pod serves its port once, with what every process recorded.
        directory = tempfile.mkdtemp(prefix="kubetune-metrics-")
        env = {MULTIPROCESS_DIR_ENV: directory, METRICS_PORT_ENV: ""}
        serve_process_metrics(port, directory)
    supervisor = Supervisor(
        _process_args(args, name), args.processes, name, None, env, oom_kills=OUT_OF_MEMORY_TRIALS
    )
    stopping = on_termination()
    log.info("runner pod: %d runner processes share the device", args.processes)
    try:
        supervisor.start(gated=True)
        supervisor.open_gate()  # the study exists: open once every process has loaded its task
        # Taken only when a dead process's trials are queued again.
        with contextlib.closing(claim_lock(url, name, patience=storage_patience())) as lock:
            supervisor.supervise(study, lock, stopping.is_set)
    finally:
        if directory is not None:  # the processes' metric files, outside a pod too
            shutil.rmtree(directory, ignore_errors=True)
    if supervisor.error is not None:
        raise CliError(supervisor.error, supervisor.error_code)
    return EXIT_OK


def _process_args(args: argparse.Namespace, name: str) -> list[str]:
    """The ``kubetune runner`` arguments of each of the pod's processes."""
    runner_args = ["--study-name", name, "--wait-for-study", str(args.wait_for_study)]
    # The URL travels in the environment as it came (never in a command line) unless given.
    runner_args += ["--storage", args.storage] if args.storage else []
    # Processes sharing one device give up after repeated out-of-memory trials, so the
    # operator can run fewer per device.
    runner_args += [
        "--exit-after-oom-trials",
        str(args.exit_after_oom_trials or OUT_OF_MEMORY_TRIALS),
    ]
    # A process whose task does not load says why in the pod's termination message first.
    path = args.termination_message_path
    runner_args += ["--termination-message-path", path] if path else []
    runner_args += [args.study] if args.study else []
    return runner_args
