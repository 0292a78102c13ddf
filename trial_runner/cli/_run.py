"""``kubetune run`` (a study on this machine, N runner processes) and ``kubetune runner``
(what a runner pod runs: trials of an existing study until its budget is spent)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from trial_runner.cli._common import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_STUDY_FAILED,
    CliError,
    fmt,
    load_study_or_env,
    storage_url,
)
from trial_runner.contract import LOCAL_WORKERS_ENV, METRICS_PORT_ENV
from trial_runner.entrypoints import check_entrypoint
from trial_runner.pareto import spread
from trial_runner.progress import StudyProgress
from trial_runner.spec import StudySpec, load_study
from trial_runner.storage import (
    budget_from_spec,
    ensure_study,
    open_storage,
    read_progress,
    redact,
    requeue_trials_of_worker,
    write_budget,
)
from trial_runner.warmstart import apply_warm_start, source_study_name

__all__ = ["cmd_run", "cmd_runner"]

log = logging.getLogger("kubetune")


def cmd_runner(args: argparse.Namespace) -> int:
    from trial_runner.metrics import RunnerMetrics, start_metrics_server
    from trial_runner.runner import run_runner, wait_for_study
    from trial_runner.task import TaskLoadError

    study = load_study_or_env(args.study)
    url = storage_url(args.storage)
    name = args.study_name or study.name
    port = _metrics_port()
    try:
        wait_for_study(url, name, timeout=args.wait_for_study)
    except KeyError:
        raise CliError(
            f"no study named {name!r} in {redact(url)} after {args.wait_for_study:g}s: a runner "
            "joins a study that exists; create it with `kubetune run` on the same storage (or "
            "apply the HPOStudy for the operator to create)",
            EXIT_STORAGE,
        ) from None
    metrics = None
    if port is not None:
        metrics = RunnerMetrics(study.metadata.namespace or "", study.name)
        start_metrics_server(port)
    try:
        summary = run_runner(study, url, name, metrics=metrics)
    except TaskLoadError as exc:
        raise CliError(str(exc)) from None
    log.info("runner done: %d trial(s), %s", summary.trials_run, summary.stop_reason)
    return EXIT_OK


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
    if args.workers < 1:
        raise CliError("--workers: must be at least 1")
    if args.trials is not None and args.trials < 1:
        raise CliError("--trials: must be at least 1")
    # Checked before the storage is touched, so a typo in the entrypoint changes nothing.
    check_entrypoint(spec.task.entrypoint)
    storage = open_storage(url, heartbeat=False)
    study = ensure_study(storage, name, spec)
    if args.trials is not None:
        budget = budget_from_spec(spec)
        stages = _scaled_stages(budget.stage_trials, args.trials)
        write_budget(study, replace(budget, max_trials=args.trials, stage_trials=stages))
    print(
        f"study {name!r}: storage {redact(url)}, {args.workers} runner process(es)",
        flush=True,
    )
    # After the budget (a warm start queues only what the budget leaves room for); local
    # studies are named after their HPOStudy, so hpoStudy names the source as it is.
    warm_start = apply_warm_start(study, spec, url, source_study_name(spec))
    if warm_start is not None:
        print(warm_start.summary(), flush=True)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = _Supervisor(args.study, url, name, args.workers, log_dir)
    interrupted = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    view = _ProgressView(enabled=not args.no_progress, multi_objective=spec.multi_objective)
    try:
        supervisor.start()
        while True:
            if interrupted:
                supervisor.terminate()
                break
            # Exits are handled before asking whether anything still runs, so a runner that
            # died is re-queued and replaced even when it was the last one running.
            supervisor.check(study)
            if supervisor.config_error or not supervisor.running():
                break
            view.update(read_progress(study, spec))
            time.sleep(0.5)
    finally:
        supervisor.terminate()
        view.close()
    if supervisor.config_error:
        raise CliError(supervisor.config_error)
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


def _scaled_stages(stages: tuple[int | None, ...], trials: int) -> tuple[int | None, ...]:
    """Stage quotas for ``--trials``: proportional, the last stage taking the rest."""
    if not stages:
        return ()
    fixed = [t or 0 for t in stages]
    total = sum(fixed) or 1
    scaled: list[int | None] = [max(1, round(t * trials / total)) for t in fixed[:-1]]
    return (*scaled, None)


class _Supervisor:
    """Starts the runner processes, re-queues and restarts any that die."""

    def __init__(self, study_path: str, url: str, name: str, workers: int, log_dir: Path):
        self.study_path, self.url, self.name = study_path, url, name
        self.workers, self.log_dir = workers, log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self.config_error: str | None = None

    def _spawn(self, slot: int) -> None:
        env = {**os.environ, LOCAL_WORKERS_ENV: str(self.workers)}
        cmd = [
            sys.executable,
            "-m",
            "trial_runner.cli",
            "runner",
            "--study-name",
            self.name,
            "--storage",
            self.url,
            self.study_path,
        ]
        log_file = open(self.log_dir / f"{self.name}-runner-{slot}.log", "ab")  # noqa: SIM115
        self.procs[slot] = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, env=env)
        log_file.close()

    def start(self) -> None:
        for slot in range(self.workers):
            self._spawn(slot)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs.values())

    def check(self, study: Any) -> None:
        from trial_runner.runner import worker_id

        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or code == 0:
                continue
            if code == EXIT_INPUT:
                self.config_error = self._last_error(slot)
                self.terminate()
                return
            requeued = requeue_trials_of_worker(study, worker_id(proc.pid))
            log.warning(
                "runner %d exited with %d; re-queued trials %s", slot, code, requeued or "none"
            )
            if self.restarts >= 3 * self.workers:
                self.config_error = f"runners keep failing: {self._last_error(slot)}"
                self.terminate()
                return
            self.restarts += 1
            self._spawn(slot)

    def _last_error(self, slot: int) -> str:
        path = self.log_dir / f"{self.name}-runner-{slot}.log"
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("kubetune: ")]
        return (errors or lines or ["runner failed"])[-1].removeprefix("kubetune: ")

    def terminate(self) -> None:
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
        return (
            f"trials {p.finished}/{p.max_trials}  running {p.running}  pruned {p.pruned}  "
            f"failed {p.failed}  {best}{stage}"
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

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def final(self, progress: Any) -> None:
        print(f"done ({progress.outcome}): {self._render(progress)}", flush=True)
