"""Warm starts: a study's first trials from given points, or from another study's results.

``spec.warmStart`` is applied by whoever prepares the study (``kubetune run`` and the operator,
right after :func:`kubetune_study.storage.ensure_study`), under the study's claim lock, so runners
claiming trials never see it half done:

* ``points`` are queued as WAITING trials of the first stage (``study.enqueue_trial``); runners
  run queued trials before sampling new ones;
* ``fromStudy`` with ``mode: AddTrials`` copies the source's complete trials into this study
  (``study.add_trials``), tagged :data:`~kubetune_api.contract.PRIOR_ATTR`: samplers learn from
  them, while the budget, stages, best trial and Pareto front leave them out;
* ``fromStudy`` with ``mode: Reevaluate`` queues the source's ``topK`` best trials like points.

Only what fits this search space is carried over. A source trial whose value of a parameter is
not a value of this study's distribution (Optuna's own test, :func:`~kubetune_study.search.
in_distribution`) is left out and reported by trial and parameter; a source parameter this
search space lacks is dropped and reported by name. Nothing here fails the study.

Applied once: the study records a digest of the warm start it applied and the report
(:data:`~kubetune_api.contract.WARM_START_ATTR`); a restart, a second ``kubetune run`` or the
operator's next pass finds the record and does nothing. Queued points also go through
``enqueue_trial(skip_if_exists=True)`` and copied trials are matched by their tag, so even an
interrupted application never queues or copies a trial twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import (
    ORIGIN_ATTR,
    PRIOR_ATTR,
    STAGE_ATTR,
    TELEMETRY_ATTR,
    WARM_START_ATTR,
)
from kubetune_api.spec import Parameter, StudySpec, best_first_key
from kubetune_study.progress import StudyProgress
from kubetune_study.search import distribution, in_distribution, point_params, searched_names
from kubetune_study.storage import claim_lock, read_progress

__all__ = [
    "Carried",
    "WarmStartReport",
    "apply_warm_start",
    "carry",
    "prior_values",
    "queue_room",
    "rank_for_reevaluation",
    "recorded_report",
    "source_study_name",
]

#: Incompatible trials named in a report (the count says how many there were).
MAX_LISTED = 20


@dataclass(frozen=True)
class WarmStartReport:
    """What a warm start did, and what it could not carry over (by name)."""

    points: int = 0  # points in the spec
    points_queued: int = 0
    points_present: int = 0  # already in the study (queued or run before)
    points_over_budget: int = 0
    source: str | None = None
    mode: str | None = None
    source_missing: bool = False
    source_trials: int = 0  # complete trials the source has
    carried: int = 0  # copied (AddTrials) or queued (Reevaluate)
    incompatible_trials: int = 0
    incompatible: tuple[str, ...] = ()  # the first MAX_LISTED, e.g. "trial 3: lr=0.5 ..."
    dropped_params: tuple[str, ...] = ()  # source parameters this search space lacks
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether everything the spec asked for was carried over."""
        return not (
            self.source_missing
            or self.incompatible_trials
            or self.dropped_params
            or self.points_over_budget
            or self.notes
        )

    def summary(self) -> str:
        """One line for a log, a CLI or a condition message."""
        parts: list[str] = []
        if self.points:
            line = f"{self.points_queued} of {self.points} point(s) queued"
            extra = []
            if self.points_present:
                extra.append(f"{self.points_present} already in the study")
            if self.points_over_budget:
                extra.append(f"{self.points_over_budget} beyond the budget")
            parts.append(line + (f" ({', '.join(extra)})" if extra else ""))
        if self.source is not None:
            if self.source_missing:
                parts.append(f"source study {self.source!r} not found in the storage")
            else:
                verb = "added as priors" if self.mode == "AddTrials" else "queued to re-run"
                parts.append(
                    f"{self.carried} trial(s) of study {self.source!r} {verb} "
                    f"({self.source_trials} complete there)"
                )
            if self.incompatible_trials:
                listed = "; ".join(self.incompatible)
                more = self.incompatible_trials - len(self.incompatible)
                parts.append(
                    f"{self.incompatible_trials} incompatible trial(s) left out: {listed}"
                    + (f"; and {more} more" if more > 0 else "")
                )
            if self.dropped_params:
                parts.append(
                    "parameters not in this search space, dropped: "
                    + ", ".join(self.dropped_params)
                )
        parts.extend(self.notes)
        return "warm start: " + ("; ".join(parts) if parts else "nothing to do")

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attr(cls, raw: Mapping[str, Any]) -> WarmStartReport:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        for key in ("incompatible", "dropped_params", "notes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass(frozen=True)
class Carried:
    """A source trial as this study sees it: the parameters that fit, and those that do not."""

    trial: FrozenTrial
    params: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return not self.problems


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


def _misfit(p: Parameter, value: Any) -> str:
    """Why ``value`` is not a value of ``p``, for a report."""
    if p.type == "Categorical":
        return f"{p.name}={value!r} is not one of the choices {p.choices}"
    step = f" with step {p.step}" if p.step is not None else ""
    scale = " (Log)" if p.scale == "Log" else ""
    return f"{p.name}={value!r} does not fit {p.type} [{p.low}, {p.high}]{step}{scale}"


def carry(trial: FrozenTrial, spec: StudySpec) -> tuple[Carried, set[str]]:
    """``trial``'s parameters that are values of this search space's distributions, the
    problems of those that are not, and the names of parameters this space lacks."""
    by_name = {p.name: p for p in spec.search_space}
    params: dict[str, Any] = {}
    problems: list[str] = []
    dropped: set[str] = set()
    for name, value in trial.params.items():
        parameter = by_name.get(name)
        if parameter is None:
            dropped.add(name)
            continue
        fits, external = in_distribution(distribution(parameter), value)
        if fits:
            params[name] = external
        else:
            problems.append(_misfit(parameter, value))
    return Carried(trial, params, tuple(problems)), dropped


def prior_values(
    trial: FrozenTrial, spec: StudySpec, source_metrics: Sequence[str] | None
) -> list[float] | str:
    """The trial's value of each of this study's objectives, or why there is none.

    By metric name: the metrics kubetune recorded with the trial, else the source study's
    values under its metric names. A study without either cannot say what its values measure.
    """
    recorded = (trial.user_attrs.get(TELEMETRY_ATTR) or {}).get("metrics") or {}
    named = dict(zip(source_metrics or [], trial.values or [], strict=False))
    values: list[float] = []
    missing: list[str] = []
    for objective in spec.all_objectives:
        if objective.metric in recorded:
            values.append(float(recorded[objective.metric]))
        elif objective.metric in named:
            values.append(float(named[objective.metric]))
        else:
            missing.append(objective.metric)
    if missing:
        return f"no value of {', '.join(repr(m) for m in missing)} recorded"
    return values


def rank_for_reevaluation(carried: Sequence[Carried], directions: Sequence[str]) -> list[Carried]:
    """Compatible source trials, best first under the source's own objectives: by
    non-domination rank (NSGA-II's; with one objective, simply by value), then by the first
    objective, then by trial number."""
    usable = [c for c in carried if c.compatible and c.trial.values is not None]
    if not usable:
        return []
    losses = np.asarray([best_first_key(directions, c.trial.values) for c in usable])
    ranks = _fast_non_domination_rank(losses)
    order = sorted(
        range(len(usable)),
        key=lambda i: (
            int(ranks[i]),
            best_first_key(directions, usable[i].trial.values),
            usable[i].trial.number,
        ),
    )
    return [usable[i] for i in order]


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
