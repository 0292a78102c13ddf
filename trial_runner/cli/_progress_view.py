"""What ``kubetune run`` shows while its study runs, and the Pareto front it prints at the end."""

from __future__ import annotations

from typing import Any

from kubetune_api.spec import StudySpec
from kubetune_study.pareto import spread
from kubetune_study.progress import StudyProgress
from trial_runner.cli._common import fmt

__all__ = ["FRONT_SHOWN", "ProgressView", "print_front"]

#: Front trials ``kubetune run`` prints (``kubetune results`` lists them all).
FRONT_SHOWN = 10


class ProgressView:
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


def print_front(progress: StudyProgress, spec: StudySpec) -> None:
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
