"""``kubetune report``: one self-contained HTML file to read a study by looking at it.

Optuna's plots (``optuna.visualization``: optimization history, parameter importances,
parallel coordinates, slices, intermediate values with the pruned trials marked, the Pareto
front of a multi-objective study, the timeline) and plotly figures of kubetune's telemetry
(time per trial and its overhead, micro-batch and accumulation, estimated and measured peak
memory, trials per warm process, GPU utilisation), the best of each stage, and links to the
trials' profile traces. plotly.js is inlined once, so the file opens offline.

:func:`plan_report` (:mod:`._plan`) decides from the trials alone which figures there are;
:func:`render_report` (:mod:`._html`) builds them (:mod:`._figures`) and the page.
"""

from __future__ import annotations

from pathlib import Path

from trial_runner.report import _plan
from trial_runner.report._html import objective_names, render_report
from trial_runner.report._plan import *  # noqa: F403 (its names are this package's too)

__all__ = ["objective_names", "render_report", "write_report"]
__all__ += _plan.__all__


def write_report(path: Path, document: str) -> None:
    """Write the rendered report atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(path)
