"""Applying a warm start to a study, once, under its claim lock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import (
    ORIGIN_ATTR,
    PRIOR_ATTR,
    STAGE_ATTR,
    WARM_START_ATTR,
)
from kubetune_api.spec import StudySpec
from kubetune_study.progress import StudyProgress
from kubetune_study.search import distribution, point_params, searched_names
from kubetune_study.storage import claim_lock, read_progress
from kubetune_study.warmstart._carry import Carried, carry, prior_values, rank_for_reevaluation
from kubetune_study.warmstart._report import MAX_LISTED, WarmStartReport

__all__ = ["apply_warm_start", "queue_room", "recorded_report", "source_study_name"]


def source_study_name(
    spec: StudySpec, hpo_study_name: Callable[[str], str] = lambda name: name
) -> str | None:
    """The Optuna study ``fromStudy`` names: ``studyName`` as written, or the study of the
    HPOStudy ``hpoStudy`` (``hpo_study_name`` maps it: locally the name itself, on a cluster
    ``<namespace>.<name>``)."""
    ws = spec.warm_start
    source = ws.from_study if ws is not None else None
    if source is None:
        return None
    if source.study_name is not None:
        return source.study_name
    assert source.hpo_study is not None, "a validated fromStudy names one source"
    return hpo_study_name(source.hpo_study)


def queue_room(progress: StudyProgress) -> int:
    """Trials a warm start may queue now: what is left of the budget and of the first stage,
    and none once the study is past its first stage (points are first-stage trials)."""
    if progress.current_stage != 0:
        return 0
    first = progress.stages[0]
    left_in_stage = first.quota - (first.complete + first.pruned + first.active)
    left = progress.max_trials - (progress.finished + progress.active)
    return max(0, min(left, left_in_stage))


def apply_warm_start(
    study: optuna.Study, spec: StudySpec, url: str, source: str | None
) -> WarmStartReport | None:
    """Apply ``spec.warmStart`` to ``study`` (in the storage at ``url``) once, under the study's
    claim lock (see the module docstring); the report of what was done, now or by an earlier
    call. ``source`` is :func:`source_study_name`."""
    ws = spec.warm_start
    if ws is None:
        return None
    digest = _digest(spec, source)
    recorded = _recorded(study, digest)
    if recorded is not None:
        return recorded
    lock = claim_lock(url, study.study_name)
    try:
        with lock:
            recorded = _recorded(study, digest)
            if recorded is not None:
                return recorded
            report = _apply(study, spec, source)
            study.set_user_attr(WARM_START_ATTR, {"digest": digest, "report": report.to_attr()})
    finally:
        lock.close()
    return report


def recorded_report(study: optuna.Study) -> WarmStartReport | None:
    """The report of the last warm start applied to ``study``, if any."""
    raw = study.user_attrs.get(WARM_START_ATTR)
    if not isinstance(raw, dict):
        return None
    return WarmStartReport.from_attr(raw.get("report") or {})


def _digest(spec: StudySpec, source: str | None) -> str:
    assert spec.warm_start is not None
    document = {"warmStart": spec.warm_start.model_dump(mode="json"), "source": source}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def _recorded(study: optuna.Study, digest: str) -> WarmStartReport | None:
    raw = study.user_attrs.get(WARM_START_ATTR)
    if isinstance(raw, dict) and raw.get("digest") == digest:
        return WarmStartReport.from_attr(raw.get("report") or {})
    return None


def _apply(study: optuna.Study, spec: StudySpec, source: str | None) -> WarmStartReport:
    ws = spec.warm_start
    assert ws is not None
    room = queue_room(read_progress(study, spec))
    queued = present = over = 0
    for index, point in enumerate(ws.points or []):
        if queued >= room:
            over += 1
        elif _enqueue(study, point_params(spec, point), f"point {index}"):
            queued += 1
        else:
            present += 1
    report = WarmStartReport(
        points=len(ws.points or []),
        points_queued=queued,
        points_present=present,
        points_over_budget=over,
    )
    if ws.from_study is None or source is None:
        return report
    return _from_study(study, spec, source, ws.from_study.mode, room - queued, report)


def _from_study(
    study: optuna.Study,
    spec: StudySpec,
    source: str,
    mode: Literal["AddTrials", "Reevaluate"],
    room: int,
    report: WarmStartReport,
) -> WarmStartReport:
    fields: dict[str, Any] = {"source": source, "mode": mode}
    if source == study.study_name:
        notes = ("a study cannot warm-start from itself: fromStudy ignored",)
        return _replace(report, **fields, notes=notes)
    try:
        origin = optuna.load_study(study_name=source, storage=study._storage)
    except KeyError:
        return _replace(report, **fields, source_missing=True)
    trials = [
        t
        for t in origin.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if PRIOR_ATTR not in t.user_attrs  # the source's own results, not its priors
    ]
    carried: list[Carried] = []
    dropped: set[str] = set()
    for trial in trials:
        one, lacking = carry(trial, spec)
        carried.append(one)
        dropped |= lacking
    problems = [f"trial {c.trial.number}: {', '.join(c.problems)}" for c in carried if c.problems]
    if mode == "AddTrials":
        count, value_problems = _add_priors(study, spec, source, origin, carried)
        problems += value_problems
    else:
        assert spec.warm_start is not None and spec.warm_start.from_study is not None
        top_k = spec.warm_start.from_study.top_k or 0
        directions = [d.name.capitalize() for d in origin.directions]
        ranked = rank_for_reevaluation(carried, directions)
        count = _reevaluate(study, spec, source, ranked, top_k, room)
        beyond = min(top_k, len(ranked)) - max(room, 0)
        if beyond > 0:
            fields["notes"] = (*report.notes, f"{beyond} re-evaluation(s) beyond the budget")
    return _replace(
        report,
        **fields,
        source_trials=len(trials),
        carried=count,
        incompatible_trials=len(problems),
        incompatible=tuple(problems[:MAX_LISTED]),
        dropped_params=tuple(sorted(dropped)),
    )


def _replace(report: WarmStartReport, **changes: Any) -> WarmStartReport:
    return WarmStartReport(**{**asdict(report), **changes})


def _add_priors(
    study: optuna.Study,
    spec: StudySpec,
    source: str,
    origin: optuna.Study,
    carried: Sequence[Carried],
) -> tuple[int, list[str]]:
    """Copy the compatible source trials (not copied before) as complete trials; returns how
    many were copied and the trials left out for want of a value."""
    present = {
        t.user_attrs[PRIOR_ATTR]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if PRIOR_ATTR in t.user_attrs
    }
    distributions = {p.name: distribution(p) for p in spec.search_space}
    priors: list[FrozenTrial] = []
    problems: list[str] = []
    for one in carried:
        if not one.compatible:
            continue
        values = prior_values(one.trial, spec, origin.metric_names)
        if isinstance(values, str):
            problems.append(f"trial {one.trial.number}: {values}")
            continue
        tag = f"{source}#{one.trial.number}"
        if tag in present:
            continue
        priors.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=values,
                params=one.params,
                distributions={name: distributions[name] for name in one.params},
                user_attrs={PRIOR_ATTR: tag},
            )
        )
    study.add_trials(priors)
    return len(priors), problems


def _reevaluate(
    study: optuna.Study,
    spec: StudySpec,
    source: str,
    ranked: Sequence[Carried],
    top_k: int,
    room: int,
) -> int:
    """Queue the best ``top_k`` compatible source trials (within ``room``); with stages, only
    their parameters the first stage searches (the stage fixes the others)."""
    first_stage = searched_names(spec, 0)
    queued = 0
    for one in ranked[: min(top_k, max(room, 0))]:
        params = {k: v for k, v in one.params.items() if k in first_stage}
        if _enqueue(study, params, f"{source}#{one.trial.number}"):
            queued += 1
    return queued


def _enqueue(study: optuna.Study, params: dict[str, Any], origin: str) -> bool:
    """Queue a first-stage trial with ``params`` unless one with them exists; whether it was."""
    if not params:
        return False  # nothing to fix: the sampler would choose every value anyway
    before = len(study.get_trials(deepcopy=False))
    study.enqueue_trial(
        params, user_attrs={STAGE_ATTR: 0, ORIGIN_ATTR: origin}, skip_if_exists=True
    )
    return len(study.get_trials(deepcopy=False)) > before
