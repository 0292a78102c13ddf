"""The ``kubetune`` command line.

``kubetune run`` runs a study on this machine with N runner processes; ``kubetune runner`` is
what a runner pod runs; ``results``, ``validate`` and ``estimate`` inspect a study.

Exit codes: 0 success; 1 the study failed (maxFailedTrials reached); 2 invalid input (spec,
task entrypoint, flags); 3 storage unreachable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trial_runner.entrypoints import TaskLoadError, check_entrypoint
from trial_runner.spec import HPOStudy, SpecError, load_study, study_from_mapping
from trial_runner.storage import (
    DEFAULT_LOCAL_STORAGE,
    STORAGE_ENV,
    StorageError,
    budget_from_spec,
    ensure_study,
    open_storage,
    read_progress,
    redact,
    requeue_trials_of_worker,
    write_budget,
)

__all__ = ["main"]

STUDY_ENV = "KUBETUNE_STUDY"
EXIT_OK, EXIT_STUDY_FAILED, EXIT_INPUT, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("kubetune")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- helpers


def _storage_url(flag: str | None) -> str:
    return flag or os.environ.get(STORAGE_ENV) or DEFAULT_LOCAL_STORAGE


def _load(path: str | None) -> HPOStudy:
    if path:
        return load_study(path)
    raw = os.environ.get(STUDY_ENV)
    if not raw:
        raise CliError(f"no study: give STUDY.yaml or set {STUDY_ENV}")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise CliError(f"{STUDY_ENV}: not valid YAML") from None
    return study_from_mapping(doc, STUDY_ENV)


def _open_study(url: str, name: str) -> Any:
    import optuna

    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise CliError(
            f"no study named {name!r} in {redact(url)} (run it first with kubetune run)"
        ) from None


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    spec = study.spec
    stages = len(spec.stages) if spec.stages else 1
    print(
        f"{args.study}: valid HPOStudy {study.name!r}: {len(spec.search_space)} parameters, "
        f"{stages} stage(s), budget {spec.budget.max_trials} trials, sampler {spec.sampler.type}, "
        f"pruner {spec.pruner.type}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- runner


def cmd_runner(args: argparse.Namespace) -> int:
    from trial_runner.runner import run_runner, wait_for_study
    from trial_runner.task import TaskLoadError

    study = _load(args.study)
    url = _storage_url(args.storage)
    name = args.study_name or study.name
    try:
        wait_for_study(url, name, timeout=args.wait_for_study)
    except KeyError:
        raise CliError(f"no study named {name!r} in {redact(url)}", EXIT_STORAGE) from None
    try:
        summary = run_runner(study, url, name)
    except TaskLoadError as exc:
        raise CliError(str(exc)) from None
    log.info("runner done: %d trial(s), %s", summary.trials_run, summary.stop_reason)
    return EXIT_OK


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    study_doc = load_study(args.study)
    spec = study_doc.spec
    url = _storage_url(args.storage)
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
        write_budget(
            study,
            type(budget)(
                max_trials=args.trials,
                max_failed_trials=budget.max_failed_trials,
                timeout_seconds=budget.timeout_seconds,
                stage_trials=_scaled_stages(budget.stage_trials, args.trials),
            ),
        )
    print(
        f"study {name!r}: storage {redact(url)}, {args.workers} runner process(es)",
        flush=True,
    )
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = _Supervisor(args.study, url, name, args.workers, log_dir)
    interrupted = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    view = _ProgressView(enabled=not args.no_progress)
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
        print(f"best value: {_fmt(progress.best_value)} (trial {progress.best_trial})")
        print("best params:")
        for key, value in progress.best_params.items():
            print(f"  {key}: {value}")
    if progress.outcome == "TooManyFailures":
        print(f"study failed: {progress.failed} failed trials (see {log_dir})")
        return EXIT_STUDY_FAILED
    return EXIT_OK


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
        env = dict(os.environ, KUBETUNE_LOCAL_WORKERS=str(self.workers))
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
    """Live progress with rich: trials done / budget, pruned, failed, best so far."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.enabled = enabled and self.console.is_terminal
        self._live: Any = None
        self._last_line = ""

    def _render(self, p: Any) -> str:
        stage = f"  stage {p.current_stage + 1}/{len(p.stages)}" if len(p.stages) > 1 else ""
        return (
            f"trials {p.finished}/{p.max_trials}  running {p.running}  pruned {p.pruned}  "
            f"failed {p.failed}  best {_fmt(p.best_value)}{stage}"
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


# --------------------------------------------------------------------------- results


def cmd_results(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    study_doc = load_study(args.study)
    spec = study_doc.spec
    url = _storage_url(args.storage)
    name = args.study_name or study_doc.name
    study = _open_study(url, name)
    progress = read_progress(study, spec)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # wide enough for the trials table in logs and pipes
    summary = Table(title=f"study {name}", show_header=False)
    for label, value in [
        ("outcome", progress.outcome),
        ("finished", f"{progress.finished}/{progress.max_trials}"),
        ("complete", progress.complete),
        ("pruned", progress.pruned),
        ("failed", progress.failed),
        ("running", progress.running),
        ("best value", _fmt(progress.best_value)),
        ("best trial", progress.best_trial),
    ]:
        summary.add_row(label, str(value))
    console.print(summary)
    if len(progress.stages) > 1:
        stages = Table(title="stages")
        for col in ("stage", "trials", "complete", "pruned", "best", "best params"):
            stages.add_column(col)
        for row in progress.stages:
            stages.add_row(
                str(row.index + 1),
                str(row.quota),
                str(row.complete),
                str(row.pruned),
                _fmt(row.best_value),
                ", ".join(f"{k}={v}" for k, v in (row.best_params or {}).items()),
            )
        console.print(stages)
    trials = Table(title=f"top {args.top} trials")
    cols = ["#", "state", "value", "epochs", "folds", "micro×acc", "wall s", "overhead s"]
    cols += ["peak MiB", "precision", "stop"]
    for col in cols:
        trials.add_column(col)
    from optuna.trial import TrialState

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    direction = spec.objective.direction
    ranked = sorted(
        finished,
        key=lambda t: (
            t.state != TrialState.COMPLETE,
            -(t.value or 0) if direction == "Maximize" else (t.value or 0),
        ),
    )
    for t in ranked[: args.top]:
        a = t.user_attrs.get("kubetune.telemetry") or {}
        trials.add_row(
            str(t.number),
            t.state.name,
            _fmt(t.value),
            str(a.get("epochs_run", "-")),
            str(a.get("folds_run", "-")),
            f"{a.get('micro_batch', '-')}×{a.get('accumulation_steps', '-')}",
            _fmt(a.get("wall_seconds")),
            _fmt(a.get("overhead_seconds")),
            _mib(a.get("peak_memory_bytes")),
            str(a.get("precision", "-")),
            str(a.get("stop_reason", "-")),
        )
    console.print(trials)
    if args.output:
        out = {
            "study": name,
            "outcome": progress.outcome,
            "bestValue": progress.best_value,
            "bestParams": progress.best_params,
            "bestTrial": progress.best_trial,
            "trials": {
                "complete": progress.complete,
                "pruned": progress.pruned,
                "failed": progress.failed,
                "running": progress.running,
                "budget": progress.max_trials,
            },
            "stages": [
                {
                    "stage": row.index + 1,
                    "bestValue": row.best_value,
                    "bestParams": row.best_params,
                    "bestTrial": row.best_trial,
                }
                for row in progress.stages
            ],
        }
        Path(args.output).write_text(yaml.safe_dump(out, sort_keys=False))
        print(f"wrote {args.output}")
    return EXIT_OK


# --------------------------------------------------------------------------- estimate


def cmd_estimate(args: argparse.Namespace) -> int:
    from trial_runner.memory import run_estimate

    study = _load(args.study)
    return run_estimate(
        study, as_json=args.json, termination_message_path=args.termination_message_path
    )


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Hyperparameter optimisation with warm trial runners."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study on this machine")
    run.add_argument("study", help="HPOStudy YAML file")
    run.add_argument(
        "--storage", help=f"storage URL (default ${STORAGE_ENV} or {DEFAULT_LOCAL_STORAGE})"
    )
    run.add_argument("--workers", type=int, default=1, help="runner processes (default 1)")
    run.add_argument("--trials", type=int, help="override spec.budget.maxTrials")
    run.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    run.add_argument("--log-dir", default=".kubetune/logs", help="runner logs")
    run.add_argument("--no-progress", action="store_true", help="plain progress lines")
    run.set_defaults(func=cmd_run)

    runner = sub.add_parser("runner", help="run trials of an existing study (a runner pod)")
    runner.add_argument("study", nargs="?", help=f"HPOStudy YAML file (default ${STUDY_ENV})")
    runner.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    runner.add_argument("--storage", help=f"storage URL (default ${STORAGE_ENV})")
    runner.add_argument("--wait-for-study", type=float, default=120.0, help="seconds")
    runner.set_defaults(func=cmd_runner)

    results = sub.add_parser("results", help="summarise a study")
    results.add_argument("study", help="HPOStudy YAML file")
    results.add_argument("--storage", help="storage URL")
    results.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    results.add_argument("--output", help="write best params, value and counts as YAML")
    results.add_argument("--top", type=int, default=10, help="trials to list")
    results.set_defaults(func=cmd_results)

    validate = sub.add_parser("validate", help="check a study spec")
    validate.add_argument("study", help="HPOStudy YAML file")
    validate.set_defaults(func=cmd_validate)

    estimate = sub.add_parser("estimate", help="peak memory of the largest configuration")
    estimate.add_argument("study", nargs="?", help=f"HPOStudy YAML file (default ${STUDY_ENV})")
    estimate.add_argument("--json", action="store_true", help="print JSON")
    estimate.add_argument("--termination-message-path", help="also write the JSON here")
    estimate.set_defaults(func=cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("optuna").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SpecError as exc:
        print(f"kubetune: {exc.render()}", file=sys.stderr)
        return EXIT_INPUT
    except StorageError as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except (CliError, TaskLoadError) as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, CliError) else EXIT_INPUT
    return code


if __name__ == "__main__":
    sys.exit(main())
