"""``kubetune report``: a study as one self-contained HTML file (:mod:`trial_runner.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kubetune_api.spec import load_study
from kubetune_study.storage import read_progress
from trial_runner.cli._common import (
    EXIT_OK,
    CliError,
    StepLog,
    open_existing_study,
    storage_url,
)

__all__ = ["cmd_report"]


def cmd_report(args: argparse.Namespace) -> int:
    from trial_runner.report import render_report, write_report

    step = StepLog("report")
    study_doc = load_study(args.study)
    output = Path(args.output)
    if output.is_dir():
        raise CliError(f"--output {output}: is a directory; give a file name, e.g. report.html")
    if not output.parent.is_dir():
        raise CliError(f"--output {output}: directory {output.parent} does not exist")
    name = args.study_name or study_doc.name
    study = open_existing_study(storage_url(args.storage), name)
    step(f"reading the trials of study {name!r}")
    spec = study_doc.spec
    # Budget and stages come from the spec; a study with several objectives is summarised by
    # Optuna alone (best per stage compares single values).
    progress = read_progress(study, spec) if len(study.directions) == 1 else None
    document, plan = render_report(
        study,
        output_dir=output.parent,
        names=[objective.metric for objective in spec.all_objectives],
        progress=progress,
        on_figure=lambda title: step(f"plotting {title}"),
    )
    try:
        write_report(output, document)
    except OSError as error:
        raise CliError(f"--output {output}: {error.strerror}") from None
    step(f"wrote {output} ({len(document.encode()) / 2**20:.1f} MiB, {len(plan.figures)} figures)")
    return EXIT_OK
