"""The decision's record of the study's progress: trial counts, the best trial or the Pareto
front, the stage, the warm start's report (and their ConfigMap and events when they changed)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from hpo_operator.reconcile._plan import (
    EventReason,
    PlanBuilder,
    WriteBest,
    WriteFront,
)

from kubetune_api.spec import choose_sampler
from kubetune_api.status import (
    FRONT_LIMIT,
    MESSAGE_LIMIT,
    BestTrial,
    ConditionReason,
    ConditionType,
    FrontTrial,
    ParetoFront,
    SamplerStatus,
    StageStatus,
    TelemetryStatus,
    TrialCounts,
)
from kubetune_study.pareto import spread
from kubetune_study.progress import StudyProgress
from kubetune_study.warmstart import WarmStartReport

__all__ = ["number", "record_progress", "record_warm_start"]

#: The trial counts of ``status.trials``, as :class:`StudyProgress` names them.
_TRIAL_STATES = ("complete", "pruned", "failed", "preempted", "running", "waiting")


def record_progress(b: PlanBuilder, progress: StudyProgress) -> None:
    """Trial counts, the best trial (and its ConfigMap when it changed), the stage."""
    spec = b.spec
    counts = {state: getattr(progress, state) for state in _TRIAL_STATES}
    if spec.constraints:
        counts["infeasible"] = progress.infeasible
    b.status.trials = TrialCounts(**counts, budget=progress.max_trials)
    choice = choose_sampler(spec)
    b.status.sampler = SamplerStatus(type=choice.type, reason=choice.reason)
    b.status.trials_summary = f"{progress.finished}/{progress.max_trials}"
    telemetry = progress.telemetry
    if telemetry.processes:
        b.status.telemetry = TelemetryStatus(
            overhead_seconds=_rounded(telemetry.mean_overhead_seconds),
            trials_per_process=_rounded(telemetry.trials_per_process),
            processes=telemetry.processes,
        )
    b.status.stage = StageStatus(
        current=progress.current_stage + 1, total=len(spec.stages) if spec.stages else 1
    )
    if spec.multi_objective:
        _record_front(b, progress)
    else:
        _record_best(b, progress)
    old_stage = b.old.stage.current if b.old.stage is not None else None
    if spec.stages and old_stage is not None and old_stage != progress.current_stage + 1:
        b.event(
            "Normal",
            EventReason.STAGE_STARTED,
            f"stage {progress.current_stage + 1} of {len(spec.stages)} "
            f"(groups {', '.join(spec.stages[progress.current_stage].groups)})",
        )


def _record_best(b: PlanBuilder, progress: StudyProgress) -> None:
    """The best trial, and its ConfigMap and event when it changed."""
    spec = b.spec
    best, value, params = progress.best_trial, progress.best_value, progress.best_params or {}
    if best is not None and value is not None:
        b.status.best = BestTrial(
            value=number(value), trial=best, params={k: _param(v) for k, v in params.items()}
        )
        if best != (b.old.best.trial if b.old.best is not None else None):
            b.actions.append(WriteBest(value, dict(params), best))
            b.event(
                "Normal",
                EventReason.NEW_BEST_TRIAL,
                f"trial {best}: {spec.primary_objective.metric}={number(value)} "
                f"with {_describe_params(params)}",
            )


def _record_front(b: PlanBuilder, progress: StudyProgress) -> None:
    """The Pareto front's size and at most FRONT_LIMIT of its trials; the whole front to the
    ConfigMap, and an event, when its trials changed."""
    objectives = b.spec.all_objectives
    front = progress.pareto_front
    digest = _front_digest([t.number for t in front])
    b.status.pareto_front = ParetoFront(
        size=len(front),
        digest=digest,
        trials=[
            FrontTrial(
                trial=t.number,
                values={o.metric: number(v) for o, v in zip(objectives, t.values, strict=True)},
                params={k: _param(v) for k, v in t.params.items()},
            )
            for t in spread(front, FRONT_LIMIT)
        ],
    )
    old = b.old.pareto_front.digest if b.old.pareto_front is not None else None
    if front and digest != old:
        b.actions.append(WriteFront(front))
        listed = ", ".join(str(t.number) for t in spread(front, FRONT_LIMIT))
        more = " ..." if len(front) > FRONT_LIMIT else ""
        b.event(
            "Normal", EventReason.PARETO_FRONT_CHANGED, f"{len(front)} trial(s): {listed}{more}"
        )


def _front_digest(numbers: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, numbers)).encode()).hexdigest()[:16]


def record_warm_start(b: PlanBuilder, report: WarmStartReport | None) -> None:
    """``WarmStarted``: what the warm start carried over and what it left out, by name."""
    if report is None:
        return
    if report.source_missing:
        reason = ConditionReason.SOURCE_NOT_FOUND
    elif report.complete:
        reason = ConditionReason.APPLIED
    else:
        reason = ConditionReason.PARTLY_APPLIED
    message = report.summary()
    b.condition(ConditionType.WARM_STARTED, True, reason, message)
    old = b.old.condition(ConditionType.WARM_STARTED)
    if old is None or old.reason != reason or old.message != message[:MESSAGE_LIMIT]:
        b.event(
            "Normal" if reason == ConditionReason.APPLIED else "Warning",
            ConditionType.WARM_STARTED,
            message,
        )


def number(value: float) -> str:
    return f"{value:.6g}"


def _rounded(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"


def _param(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _describe_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_param(v)}" for k, v in sorted(params.items())) or "no parameters"
