"""The ``kubetune`` command line.

``kubetune run`` runs a study on this machine with N runner processes (:mod:`._run`) and
``kubetune runner`` is what a runner pod runs (:mod:`._runner`); ``results``
(:mod:`._results`), ``report`` (:mod:`._report`), ``validate`` and ``estimate``
(:mod:`.estimate`, which the operator's estimate pod runs) inspect a study.

Exit codes: 0 success; 1 the study failed (its trials kept failing); 2 invalid input (spec,
task entrypoint, flags); 3 storage unreachable; 4 a runner's trials kept running out of memory
on a device it shares with other runner processes; 5 a runner process whose trial hung (its
supervisor starts another); 6 (``runner``) the task could not be imported or could not load
its data; 7 the runner was given a GPU (``accelerator: GPU`` or ``MIG``, or by the operator's
sizing) that CUDA cannot use; 130 interrupted. With ``--termination-message-path``
(``runner``, ``estimate``) an error is also written there in one line, where Kubernetes shows
it as the container's termination message, unless something was written there already.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune_api.contract import (
    ESTIMATE_COMMAND,
    JSON_OPTION,
    LOG_LEVEL_ENV,
    PROCESSES_OPTION,
    RUNNER_COMMAND,
    STORAGE_ENV,
    STUDY_ENV,
    STUDY_NAME_OPTION,
    TERMINATION_MESSAGE_OPTION,
)
from kubetune_api.spec import CLIENT_SIDE_APPLY_BYTES, SpecError, choose_sampler, load_study
from kubetune_study.storage import DEFAULT_LOCAL_STORAGE, StorageError
from trial_runner.cli._common import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_STORAGE,
    CliError,
    write_termination_message,
)
from trial_runner.cli._oom_guard import OUT_OF_MEMORY_TRIALS
from trial_runner.cli._report import cmd_report
from trial_runner.cli._results import cmd_results
from trial_runner.cli._run import cmd_run
from trial_runner.cli._runner import cmd_runner
from trial_runner.cli.estimate import cmd_estimate
from trial_runner.entrypoints import TaskLoadError

__all__ = ["build_parser", "main"]


def cmd_validate(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    spec = study.spec
    stages = len(spec.stages) if spec.stages else 1
    choice = choose_sampler(spec)
    print(
        f"{args.study}: valid HPOStudy {study.name!r}: {len(spec.search_space)} parameters, "
        f"{stages} stage(s), budget {spec.budget.max_trials} trials, sampler {choice.type}, "
        f"pruner {spec.pruner.type}"
    )
    print(f"  sampler: {choice.type} ({choice.reason})")
    conditional = [p.name for p in spec.search_space if p.when is not None]
    if conditional:
        print(f"  conditional parameters: {', '.join(conditional)}")
    if spec.constraints:
        print(f"  constraints: {'; '.join(c.describe() for c in spec.constraints)}")
    if spec.multi_objective:
        listed = ", ".join(f"{o.metric} ({o.direction})" for o in spec.all_objectives)
        print(f"  {len(spec.all_objectives)} objectives: {listed}")
    ws = spec.warm_start
    if ws is not None:
        parts = [f"{len(ws.points)} point(s)"] if ws.points else []
        if ws.from_study is not None:
            source = ws.from_study.hpo_study or ws.from_study.study_name
            top = f", top {ws.from_study.top_k}" if ws.from_study.top_k else ""
            parts.append(f"from study {source!r} ({ws.from_study.mode}{top})")
        print(f"  warm start: {', '.join(parts)}")
    template = spec.runner.template or {}
    if template:
        fields = sorted({*template.get("metadata", {}), *template.get("spec", {})})
        print(f"  runner pod template (on a cluster): {', '.join(fields)}")
    size = Path(args.study).stat().st_size
    if size > CLIENT_SIDE_APPLY_BYTES:
        print(
            f"  note: {size} bytes is more than a client-side `kubectl apply` can record "
            f"({CLIENT_SIDE_APPLY_BYTES // 1024} KiB of annotations): apply it with "
            "`kubectl apply --server-side` or `kubectl create`"
        )
    return EXIT_OK


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
    run.add_argument(
        "--workers",
        type=int,
        help="runner processes, the trials that run at once (default: spec.resources.parallelism)",
    )
    run.add_argument("--trials", type=int, help="override spec.budget.maxTrials")
    run.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    run.add_argument("--log-dir", default=".kubetune/logs", help="runner logs")
    run.add_argument("--no-progress", action="store_true", help="plain progress lines")
    run.set_defaults(func=cmd_run)

    # The pods' command lines (kubetune_api.contract) name these subcommands and options.
    runner = sub.add_parser(
        RUNNER_COMMAND[1], help="run trials of an existing study (a runner pod)"
    )
    runner.add_argument("study", nargs="?", help=f"HPOStudy YAML file (default ${STUDY_ENV})")
    runner.add_argument(STUDY_NAME_OPTION, help="Optuna study name (default metadata.name)")
    runner.add_argument("--storage", help=f"storage URL (default ${STORAGE_ENV})")
    runner.add_argument("--wait-for-study", type=float, default=120.0, help="seconds")
    runner.add_argument(
        PROCESSES_OPTION,
        type=int,
        default=1,
        help="runner processes sharing this pod's device, each claiming trials (default 1)",
    )
    runner.add_argument(
        "--exit-after-oom-trials",
        type=int,
        default=0,
        metavar="N",
        help="exit with code 4 after N trials ran out of memory (default 0: never; with "
        f"--processes, {OUT_OF_MEMORY_TRIALS})",
    )
    runner.add_argument(
        TERMINATION_MESSAGE_OPTION, help="write why the runner stopped with an error here"
    )
    runner.set_defaults(func=cmd_runner)

    results = sub.add_parser("results", help="summarise a study")
    results.add_argument("study", help="HPOStudy YAML file")
    results.add_argument("--storage", help="storage URL")
    results.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    results.add_argument("--output", help="write best params, value and counts as YAML")
    results.add_argument("--top", type=int, default=10, help="trials to list")
    results.set_defaults(func=cmd_results)

    report = sub.add_parser("report", help="write an HTML report with plots of a study")
    report.add_argument("study", help="HPOStudy YAML file")
    report.add_argument("--storage", help="storage URL")
    report.add_argument("--study-name", help="Optuna study name (default metadata.name)")
    report.add_argument("--output", default="report.html", help="HTML file (default report.html)")
    report.set_defaults(func=cmd_report)

    validate = sub.add_parser("validate", help="check a study spec")
    validate.add_argument("study", help="HPOStudy YAML file")
    validate.set_defaults(func=cmd_validate)

    estimate = sub.add_parser(ESTIMATE_COMMAND[1], help="peak memory of the largest configuration")
    estimate.add_argument("study", nargs="?", help=f"HPOStudy YAML file (default ${STUDY_ENV})")
    estimate.add_argument(JSON_OPTION, action="store_true", help="print JSON")
    estimate.add_argument(TERMINATION_MESSAGE_OPTION, help="also write the JSON here")
    estimate.set_defaults(func=cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("optuna").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SpecError as exc:
        return _failed(args, exc.render(), EXIT_INPUT)
    except StorageError as exc:
        return _failed(args, str(exc), EXIT_STORAGE)
    except (CliError, TaskLoadError) as exc:
        return _failed(args, str(exc), exc.code if isinstance(exc, CliError) else EXIT_INPUT)
    return code


def _failed(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"kubetune: {message}", file=sys.stderr)
    write_termination_message(getattr(args, "termination_message_path", None), message)
    return code
