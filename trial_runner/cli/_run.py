"""``kubetune run`` (a study on this machine, N runner processes) and ``kubetune runner``
(what a runner pod runs: trials of an existing study until its budget is spent).

Both supervise their runner processes the same way (:class:`_Supervisor`): ``kubetune run``
starts ``--workers`` of them (default ``resources.parallelism`` times a stated
``trialsPerDevice``), a runner pod ``--processes`` of them on its one device. A process that
dies has its trial re-queued and is started again; the others go on. A process whose trial
was stuck past its time or stall limit failed that trial and exits 5
(:data:`~kubetune_api.contract.TRIAL_HUNG_EXIT_CODE`): it is started again too, and not
counted as a failing process. Alone (``kubetune runner`` with one process) such a process
replaces itself (:func:`trial_runner.watchdog.replace_process`).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubetune_api.contract import (
    LOCAL_WORKERS_ENV,
    METRICS_PORT_ENV,
    START_GATE_FD_ENV,
    START_READY_FD_ENV,
    SUPERVISED_ENV,
    TRIAL_HUNG_EXIT_CODE,
)
from kubetune_api.spec import Runner, StudySpec, load_study
from kubetune_study.outage import first_line, is_connection_error
from kubetune_study.pareto import spread
from kubetune_study.progress import StudyProgress, trial_telemetry
from kubetune_study.storage import (
    budget_from_spec,
    ensure_study,
    open_storage,
    read_progress,
    redact,
    requeue_trials_of_worker,
    write_budget,
)
from kubetune_study.warmstart import WarmStartReport, apply_warm_start, source_study_name
from trial_runner.cli._common import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_STORAGE,
    EXIT_STUDY_FAILED,
    EXIT_TASK_LOAD,
    CliError,
    fmt,
    load_study_or_env,
    storage_url,
)
from trial_runner.entrypoints import check_entrypoint

__all__ = ["cmd_run", "cmd_runner"]

log = logging.getLogger("kubetune")


#: Trials that ran out of memory (retried at half the micro-batch, or pruned) after which a
#: runner process sharing its device with others gives up, so that fewer share it.
OUT_OF_MEMORY_TRIALS = 3
#: Seconds the processes started together wait, once the study is set up, for the last of
#: them to load its task; after that the ready ones start claiming.
START_BARRIER_SECONDS = 120.0
#: Where the processes of one runner pod keep their metrics for the pod's endpoint
#: (prometheus_client's multiprocess mode reads this variable).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def cmd_runner(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise CliError("--processes: must be at least 1")
    if args.exit_after_oom_trials < 0:
        raise CliError("--exit-after-oom-trials: must be 0 (never) or more")
    if args.processes > 1:
        return _run_processes(args)
    from kubetune_study.metrics import RunnerMetrics, start_metrics_server
    from trial_runner.runner import run_runner
    from trial_runner.task import TaskLoadError

    study = load_study_or_env(args.study)
    url = storage_url(args.storage)
    name = args.study_name or study.name
    port = _metrics_port()
    # Nothing to wait for (no gate, no patience): a missing study is said at once, before the
    # task loads.
    study_first = START_GATE_FD_ENV not in os.environ and args.wait_for_study <= 0
    if study_first:
        _wait_for_study(url, name, args.wait_for_study)

    def before_claims() -> None:
        """After the task's data is loaded: wait for ``kubetune run`` (when it started this
        process), then for the study."""
        _wait_for_start_gate()
        if not study_first:
            _wait_for_study(url, name, args.wait_for_study)

    metrics = None
    if port is not None or os.environ.get(MULTIPROCESS_DIR_ENV):
        # Alone, the runner serves its metrics; one of a pod's processes records them for
        # the pod's supervisor to serve.
        metrics = RunnerMetrics(study.metadata.namespace or "", study.name)
    if port is not None:
        start_metrics_server(port)
    stop = threading.Event()
    guard = _OutOfMemoryGuard(args.exit_after_oom_trials, stop)
    try:
        summary = run_runner(
            study,
            url,
            name,
            metrics=metrics,
            stop_requested=stop,
            on_trial=guard,
            before_claims=before_claims,
        )
    except TaskLoadError as exc:
        raise CliError(str(exc), EXIT_TASK_LOAD) from None
    log.info("runner done: %d trial(s), %s", summary.trials_run, summary.stop_reason)
    if guard.tripped:
        raise CliError(
            f"{guard.count} trials of this runner process ran out of memory while other runner "
            "processes shared its device; stopping so that fewer share it",
            EXIT_OUT_OF_MEMORY,
        )
    return EXIT_OK


class _OutOfMemoryGuard:
    """Stops a runner process after ``limit`` of its trials ran out of memory (0: never).

    Called with each trial the runner finishes; the stop takes effect before the next claim,
    so no trial is lost.
    """

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit = limit
        self.stop = stop
        self.count = 0

    @property
    def tripped(self) -> bool:
        return bool(self.limit) and self.count >= self.limit

    def __call__(self, trial: Any) -> None:
        telemetry = trial_telemetry(trial)
        if telemetry.get("oom_retries") or telemetry.get("stop_reason") == "OutOfMemory":
            self.count += 1
        if self.tripped:
            log.warning("%d trials ran out of memory on a shared device: stopping", self.count)
            self.stop.set()


def _wait_for_start_gate() -> None:
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


def _wait_for_study(url: str, name: str, timeout: float) -> None:
    from trial_runner.runner import wait_for_study

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
    url = storage_url(args.storage)
    name = args.study_name or study_doc.name
    _wait_for_study(url, name, args.wait_for_study)
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
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
    env: dict[str, str] = {}
    port = _metrics_port()
    directory = None
    if port is not None:
        # The pod serves its port once, with what every process recorded.
        directory = tempfile.mkdtemp(prefix="kubetune-metrics-")
        env = {MULTIPROCESS_DIR_ENV: directory, METRICS_PORT_ENV: ""}
        _serve_process_metrics(port, directory)
    supervisor = _Supervisor(
        runner_args, args.processes, name, None, env, oom_kills=OUT_OF_MEMORY_TRIALS
    )
    stopping = _on_termination()
    log.info("runner pod: %d runner processes share the device", args.processes)
    try:
        supervisor.start(gated=True)
        supervisor.open_gate()  # the study exists: open once every process has loaded its task
        supervisor.supervise(study, stopping.is_set)
    finally:
        if directory is not None:  # the processes' metric files, outside a pod too
            shutil.rmtree(directory, ignore_errors=True)
    if supervisor.error is not None:
        raise CliError(supervisor.error, supervisor.error_code)
    return EXIT_OK


def _serve_process_metrics(port: int, directory: str) -> None:
    """Serve the metrics every process of the pod records in ``directory``, summed."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from kubetune_study.metrics import start_metrics_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_metrics_server(port, registry)


def _on_termination() -> threading.Event:
    """An event set by SIGTERM or SIGINT (a pod's supervisor forwards them to its processes)."""
    stopping = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the runner processes", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


def _metrics_port() -> int | None:
    """``$KUBETUNE_METRICS_PORT`` (set on runner pods by the operator), if set."""
    raw = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise CliError(f"{METRICS_PORT_ENV}: expected a port number, got {raw!r}")
    return int(raw)


def cmd_run(args: argparse.Namespace) -> int:
    study_doc = load_study(args.study)
    spec = study_doc.spec
    url = storage_url(args.storage)
    name = args.study_name or study_doc.name
    workers = args.workers if args.workers is not None else default_workers(spec)
    if workers < 1:
        raise CliError("--workers: must be at least 1")
    if args.trials is not None and args.trials < 1:
        raise CliError("--trials: must be at least 1")
    # Checked before the storage is touched, so a typo in the entrypoint changes nothing.
    check_entrypoint(spec.task.entrypoint)
    if spec.runner != Runner():
        print(
            "note: spec.runner (the pod template, /dev/shm) applies to runner pods on a cluster "
            "only; this run uses this machine as it is",
            flush=True,
        )
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    runner_args = ["--study-name", name, "--storage", url, args.study]
    supervisor = _Supervisor(runner_args, workers, name, log_dir)
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
    interrupted = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    view = _ProgressView(enabled=not args.no_progress, multi_objective=spec.multi_objective)
    try:
        supervisor.supervise(
            study,
            lambda: interrupted,
            lambda: view.update(read_progress(study, spec)),
            # The runners wait an outage out and keep their trials; so does this view.
            on_outage=lambda error: view.outage(first_line(error)),
        )
    finally:
        view.close()
    if supervisor.error is not None:
        raise CliError(supervisor.error, supervisor.error_code)
    progress = read_progress(study, spec)
    view.final(progress)
    if interrupted:
        print("interrupted: the study is kept; run the same command to continue")
        return EXIT_INTERRUPTED
    if progress.best_params is not None:
        print(f"best value: {fmt(progress.best_value)} (trial {progress.best_trial})")
        print("best params:")
        for key, value in progress.best_params.items():
            print(f"  {key}: {value}")
    if progress.pareto_front:
        _print_front(progress, spec)
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
    # After the budget (a warm start queues only what the budget leaves room for); local
    # studies are named after their HPOStudy, so hpoStudy names the source as it is.
    return study, apply_warm_start(study, spec, url, source_study_name(spec))


#: Front trials ``kubetune run`` prints (``kubetune results`` lists them all).
FRONT_SHOWN = 10


def _print_front(progress: StudyProgress, spec: StudySpec) -> None:
    front = progress.pareto_front
    shown = spread(front, FRONT_SHOWN)
    more = f", {len(shown)} shown; kubetune results lists all" if len(shown) < len(front) else ""
    print(f"Pareto front: {len(front)} trial(s){more}")
    for t in shown:
        values = "  ".join(
            f"{o.metric}={fmt(v)}" for o, v in zip(spec.all_objectives, t.values, strict=True)
        )
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        print(f"  trial {t.number}: {values}  ({params})")


def default_workers(spec: StudySpec) -> int:
    """``kubetune run``'s runner processes without ``--workers``: the runner pods the study
    asks for, times the processes each runs when ``trialsPerDevice`` is a number."""
    return spec.resources.parallelism * (spec.resources.trials_per_device_count or 1)


def _scaled_stages(stages: tuple[int | None, ...], trials: int) -> tuple[int | None, ...]:
    """Stage quotas for ``--trials``: proportional, the last stage taking the rest."""
    if not stages:
        return ()
    fixed = [t or 0 for t in stages]
    total = sum(fixed) or 1
    scaled: list[int | None] = [max(1, round(t * trials / total)) for t in fixed[:-1]]
    return (*scaled, None)


class _Supervisor:
    """Starts runner processes, re-queues the trials of any that die and starts them again.

    ``kubetune run`` logs each process to a file in ``log_dir``; a runner pod's processes
    write to the pod's own output (``log_dir`` None). A process that exits 0 is done (the
    budget is spent); one that exits 2 (bad input) or 4 (its trials kept running out of memory
    on a shared device) stops them all, with that code in :attr:`error_code`. In a runner pod
    (``oom_kills`` > 0) a process killed by SIGKILL was killed by the kernel's out-of-memory
    killer (nothing else in a container sends it): after ``oom_kills`` of those the pod exits
    4 too.

    The processes start behind a start gate (:meth:`start` with ``gated``): they load their
    task (``kubetune run`` sets the study up meanwhile), say they are ready, and claim once
    the gate opens: after :meth:`open_gate` and once every one of them is ready or has exited
    (at most :data:`START_BARRIER_SECONDS` after :meth:`open_gate`). So they start claiming
    together, and a quick one does not spend a small budget while the others still load.
    Between passes the supervisor sleeps until a process exits, one gets ready, or half a
    second passes (:meth:`wait`).
    """

    def __init__(
        self,
        runner_args: list[str],
        workers: int,
        name: str,
        log_dir: Path | None,
        env: Mapping[str, str] | None = None,
        oom_kills: int = 0,
    ) -> None:
        self.runner_args, self.workers, self.name = runner_args, workers, name
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
        self._gate: int | None = None  # write end of the runners' start gate
        self._ready: int | None = None  # read end of the pipe the gated runners say ready on
        self._readies = 0
        self._gated: list[subprocess.Popen[bytes]] = []
        self._open_by: float | None = None  # open_gate was called; open at the latest then

    def _spawn(self, slot: int, gate: tuple[int, ...] = ()) -> None:
        cmd = [*self.command, *self.runner_args]
        env = self.env
        if gate:
            env = {**env, START_GATE_FD_ENV: str(gate[0]), START_READY_FD_ENV: str(gate[1])}
        if self.log_dir is None:
            self.procs[slot] = subprocess.Popen(cmd, env=env, pass_fds=gate)
            return
        log_file = open(self.log_dir / f"{self.name}-runner-{slot}.log", "ab")  # noqa: SIM115
        self.procs[slot] = subprocess.Popen(
            cmd, stdout=log_file, stderr=log_file, env=env, pass_fds=gate
        )
        log_file.close()

    def start(self, gated: bool = False) -> None:
        """Start the processes; ``gated``: they load their task, then wait for
        :meth:`open_gate`."""
        if not gated:
            for slot in range(self.workers):
                self._spawn(slot)
            return
        gate, self._gate = os.pipe()
        self._ready, ready = os.pipe()
        os.set_blocking(self._ready, False)
        try:
            for slot in range(self.workers):
                self._spawn(slot, (gate, ready))
                self._gated.append(self.procs[slot])
        finally:
            os.close(gate)
            os.close(ready)

    def open_gate(self) -> None:
        """The study is set up: let the gated processes claim as soon as all are ready."""
        if self._gate is not None and self._open_by is None:
            self._open_by = time.monotonic() + START_BARRIER_SECONDS
        self._open_when_ready()

    def _open_when_ready(self) -> None:
        if self._gate is None or self._open_by is None:
            return
        if self._ready is not None:
            try:
                said: bytes | None = os.read(self._ready, 4096)
            except BlockingIOError:
                said = None  # nothing new
            if said == b"":  # every gated process has said so or exited: end of file
                self._close_ready()
            elif said:
                self._readies += len(said)
        exited = sum(p.poll() is not None for p in self._gated)
        waiting = len(self._gated) - self._readies - exited
        if self._ready is not None and waiting > 0 and time.monotonic() < self._open_by:
            return
        if waiting > 0:
            log.warning("%d runner(s) still loading their task: the others start now", waiting)
        os.write(self._gate, b"g" * self.workers)
        self._close_gate()

    def _close_gate(self) -> None:
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
        self._close_ready()

    def _close_ready(self) -> None:
        if self._ready is not None:
            os.close(self._ready)
            self._ready = None

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking as soon as a process exits (or, before the
        gate opens, says it is ready)."""
        pidfds = []
        ready = [self._ready] if self._ready is not None and self._open_by is not None else []
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
        stop_requested: Callable[[], bool],
        each_pass: Callable[[], None] = lambda: None,
        on_outage: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        """Run the processes until all are done, one fails for good, or a stop is asked.

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
                    self.check(study)
                    self._open_when_ready()
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

    def check(self, study: Any) -> None:
        from trial_runner.runner import worker_id

        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or code == 0:
                continue
            if code in (EXIT_INPUT, EXIT_OUT_OF_MEMORY, EXIT_TASK_LOAD):
                self._stop(self._last_error(slot, code), code)
                return
            requeued = requeue_trials_of_worker(study, worker_id(proc.pid))
            if code == TRIAL_HUNG_EXIT_CODE:
                # Its trial is failed already (a failure of the task, counted as such): the
                # process is not failing, so this restart does not count toward the limit.
                log.warning("runner %d replaced: its trial was stuck past its limit", slot)
                self._spawn(slot)
                continue
            log.warning(
                "runner %d exited with %d; re-queued trials %s", slot, code, requeued or "none"
            )
            if self.oom_kills and code == -signal.SIGKILL:
                self.killed += 1
                if self.killed >= self.oom_kills:
                    message = (
                        f"runner processes were killed {self.killed} times, as the kernel's "
                        "out-of-memory killer does, while sharing this pod's memory"
                    )
                    self._stop(message, EXIT_OUT_OF_MEMORY)
                    return
            if self.restarts >= 3 * self.workers:
                self._stop(f"runners keep failing: {self._last_error(slot, code)}", EXIT_INPUT)
                return
            self.restarts += 1
            self._spawn(slot)

    def _stop(self, error: str, code: int) -> None:
        self.error, self.error_code = error, code
        self.terminate()

    def _last_error(self, slot: int, code: int) -> str:
        if self.log_dir is None:  # the process's own message is in the pod's log above
            return f"runner process {slot} exited with code {code}"
        path = self.log_dir / f"{self.name}-runner-{slot}.log"
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("kubetune: ")]
        return (errors or lines or ["runner failed"])[-1].removeprefix("kubetune: ")

    def terminate(self) -> None:
        """SIGTERM to every process still running (each releases its trial), then wait."""
        self._close_gate()  # a process still waiting at the gate exits
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


class _ProgressView:
    """Live progress with rich: trials done / budget, pruned, failed, best so far (or the
    Pareto front's size)."""

    def __init__(self, enabled: bool, multi_objective: bool = False) -> None:
        from rich.console import Console

        self.multi_objective = multi_objective
        self.console = Console(stderr=False)
        self.enabled = enabled and self.console.is_terminal
        self._live: Any = None
        self._last_line = ""

    def _render(self, p: Any) -> str:
        stage = f"  stage {p.current_stage + 1}/{len(p.stages)}" if len(p.stages) > 1 else ""
        best = (
            f"front {len(p.pareto_front)}" if self.multi_objective else f"best {fmt(p.best_value)}"
        )
        preempted = f"  preempted {p.preempted}" if p.preempted else ""
        return (
            f"trials {p.finished}/{p.max_trials}  running {p.running}  pruned {p.pruned}  "
            f"failed {p.failed}{preempted}  {best}{stage}"
        )

    def update(self, progress: Any) -> None:
        line = self._render(progress)
        if self.enabled:
            from rich.live import Live

            if self._live is None:
                self._live = Live(line, console=self.console, refresh_per_second=4)
                self._live.start()
            self._live.update(line)
        elif line != self._last_line:
            print(line, flush=True)
        self._last_line = line

    def outage(self, error: str) -> None:
        """The storage cannot be read now (said once per outage)."""
        line = f"storage unreachable ({error}); the runners wait for it"
        if line != self._last_line:
            print(line, flush=True)
        self._last_line = line

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def final(self, progress: Any) -> None:
        print(f"done ({progress.outcome}): {self._render(progress)}", flush=True)
