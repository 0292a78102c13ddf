"""What a runner does next, decided from the study's progress under its claim lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubetune_study.progress._state import StudyProgress

__all__ = ["Claim", "overclaimed", "plan_claim"]


@dataclass(frozen=True)
class Claim:
    """What a runner should do next: run a trial of ``stage``, wait, or stop."""

    action: Literal["Run", "Wait", "Stop"]
    stage: int = 0
    reason: str = ""


def plan_claim(progress: StudyProgress) -> Claim:
    """Decide, under the study's claim lock, whether this runner may start another trial."""
    if progress.failure is not None:
        return Claim("Stop", reason=f"the study failed: {progress.failure}")
    if progress.outcome == "TimedOut":
        return Claim("Stop", reason="timeout reached")
    if progress.waiting > 0:
        # A queued trial (a retry, or a warm start's point) is waiting: run it (it keeps its
        # own stage).
        return Claim("Run", stage=progress.current_stage, reason="queued trial")
    if progress.outcome == "BudgetSpent":
        if progress.running > 0:
            # Another runner may still die mid-trial; stay to pick up its retry.
            return Claim("Wait", reason="budget claimed; trials still running elsewhere")
        return Claim("Stop", reason="budget spent")
    stage = progress.stages[progress.current_stage]
    if stage.complete + stage.pruned + stage.active >= stage.quota:
        # The current stage is fully claimed but not finished: the next stage needs its
        # best parameters, so wait for the running trials.
        return Claim("Wait", reason="waiting for the stage's running trials")
    earlier = progress.stages[: progress.current_stage]
    if any(s.active > 0 for s in earlier):
        return Claim("Wait", reason="waiting for the previous stage to finish")
    return Claim("Run", stage=progress.current_stage)


def overclaimed(progress: StudyProgress) -> bool:
    """Whether more trials are claimed than the budget or a stage's quota allows, which only
    happens when two runners claimed at once (a claim lock lost with its connection)."""
    if progress.finished + progress.active > progress.max_trials:
        return True
    return any(s.complete + s.pruned + s.active > s.quota for s in progress.stages)
