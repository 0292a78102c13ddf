"""Search space, samplers and pruners built from the spec, with Optuna's own classes.

Pruner step numbering (what the pruner sees; see README "Pruning"):
    * ``reportEvery: Auto`` (the default) is one of the two below, by the rule of
      :func:`kubetune_study.pruning.report_every`.
    * ``reportEvery: Fold`` — step ``k`` (0-based) after fold ``k``; the value is the mean score
      of folds ``0..k``, so successive steps are comparable across trials and the last step
      equals the trial's final value. Hyperband's resource is then "folds trained".
    * ``reportEvery: Epoch`` — step ``k * E + e`` after epoch ``e`` of fold ``k`` (``E`` is the
      largest epoch count of the schedule); the value is that fold's validation score.
    * Wilcoxon always sees step ``k`` = fold ``k`` with that fold's own score: its paired test
      compares per-fold scores of a trial with the best trial's on the same folds.
    * With several objectives (MOASHA) the steps are the same and each reports the vector of
      the objectives' metrics (per fold: each one's mean over folds ``0..k``), through
      :class:`~kubetune_study.mo_pruning.IntermediateVectors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    WilcoxonPruner,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    NSGAIIISampler,
    NSGAIISampler,
    PartialFixedSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)

from kubetune_api.spec import Parameter, StudySpec, WarmStartPoint, choose_sampler
from kubetune_api.spec import Pruner as PrunerSpec
from kubetune_study.mo_pruning import IntermediateVectors, MOASHAPruner
from kubetune_study.pruning import halving_resources, max_epochs, report_every

__all__ = [
    "build_pruner",
    "build_sampler",
    "default_value",
    "distribution",
    "fixed_params_for_stage",
    "in_distribution",
    "is_conditional",
    "max_pruning_steps",
    "point_params",
    "searched_names",
    "step_reporter",
    "suggest_all",
]


def distribution(p: Parameter) -> BaseDistribution:
    """The Optuna distribution of one parameter of a validated spec."""
    if p.type == "Categorical":
        assert p.choices is not None
        return CategoricalDistribution(list(p.choices))
    assert p.low_value is not None and p.high_value is not None
    log = p.scale == "Log"
    if p.type == "Int":
        step = int(p.step_value) if p.step_value is not None else 1
        return IntDistribution(int(p.low_value), int(p.high_value), log=log, step=step)
    return FloatDistribution(p.low_value, p.high_value, log=log, step=p.step_value)


def in_distribution(dist: BaseDistribution, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` is a value of ``dist``, and the value as ``dist`` gives it out.

    Optuna's own test, the one a trial applies to an enqueued value: the value converts to the
    distribution's internal representation and lies inside it (bounds, step, choices). An Int
    distribution gives an integral float back as an int.
    """
    try:
        internal = dist.to_internal_repr(value)
    except (ValueError, TypeError):
        return False, None
    if not dist._contains(internal):
        return False, None
    return True, dist.to_external_repr(internal)


def point_params(spec: StudySpec, point: WarmStartPoint) -> dict[str, Any]:
    """A validated warm-start point as trial parameters, each of its parameter's type."""
    by_name = {p.name: p for p in spec.search_space}
    return {given.name: by_name[given.name].typed(given.value) for given in point.params}


def default_value(p: Parameter) -> Any:
    """The declared default, or the middle of the range / first choice."""
    if p.default is not None:
        return p.typed(p.default)
    if p.type == "Categorical":
        assert p.choices is not None
        return p.choices[0]
    dist = distribution(p)
    assert isinstance(dist, FloatDistribution | IntDistribution)
    mid = (dist.low * dist.high) ** 0.5 if dist.log else (dist.low + dist.high) / 2
    return round(mid) if p.type == "Int" else float(mid)


def suggest_all(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Ask the trial for every active parameter, in the order of the search space (define by
    run: a conditional parameter is asked only when its condition holds, so an inactive one
    is absent from the trial); a PartialFixedSampler answers the fixed ones."""
    by_name = {p.name: p for p in spec.search_space}
    params: dict[str, Any] = {}
    for p in spec.search_space:
        if p.active(params, by_name):
            params[p.name] = trial._suggest(p.name, distribution(p))
    return params


def is_conditional(spec: StudySpec) -> bool:
    """Whether some parameter of the search space is conditional (``when``)."""
    return any(p.when is not None for p in spec.search_space)


def searched_names(spec: StudySpec, stage: int) -> set[str]:
    if not spec.stages:
        return {p.name for p in spec.search_space}
    groups = set(spec.stages[stage].groups)
    return {p.name for p in spec.search_space if p.group in groups}


def fixed_params_for_stage(
    spec: StudySpec, stage: int, best_earlier: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Values of the parameters a stage does not search.

    A parameter searched in an earlier stage takes the value of the best trial of the earlier
    stages; one not searched yet takes its declared default.
    """
    if not spec.stages:
        return {}
    searched_now = searched_names(spec, stage)
    searched_before: set[str] = set()
    for earlier in range(stage):
        searched_before |= searched_names(spec, earlier)
    fixed: dict[str, Any] = {}
    for p in spec.search_space:
        if p.name in searched_now:
            continue
        if p.name in searched_before and best_earlier and p.name in best_earlier:
            fixed[p.name] = best_earlier[p.name]
        else:
            fixed[p.name] = default_value(p)
    return fixed


def build_sampler(
    spec: StudySpec, *, seed_offset: int = 0, fixed: Mapping[str, Any] | None = None
) -> BaseSampler:
    """The study's sampler (``Auto`` resolved by :func:`kubetune_api.spec.choose_sampler`);
    ``seed_offset`` (the next trial number) keeps parallel runners apart.

    Runners build a sampler per trial under the study's claim lock. Offsetting the seed by the
    trial number makes runs reproducible with one runner and keeps several runners from
    drawing the same values. QMC keeps one seed: its sequence index is the trial number.
    NSGA-II and NSGA-III keep their generations in the study's trials, so a sampler built per
    trial continues them. TPE groups the parameters that appear together when the space is
    conditional (``group``, with ``multivariate``), Optuna's way of modelling a conditional
    space. Constraints reach TPE, GP and NSGA through each trial's constraint values
    (``Trial.set_constraint``), which the runner records.
    """
    sampler = spec.sampler
    kind = choose_sampler(spec).type
    seed = None if sampler.seed is None else (sampler.seed + 7919 * seed_offset) % 2**31
    startup: dict[str, Any] = {}
    if sampler.n_startup_trials is not None:
        startup["n_startup_trials"] = sampler.n_startup_trials
    base: BaseSampler
    if kind == "TPE":
        multivariate = sampler.multivariate
        base = TPESampler(
            seed=seed,
            constant_liar=sampler.constant_liar,
            multivariate=multivariate,
            group=multivariate and is_conditional(spec),
            **startup,
        )
    elif kind == "Random":
        base = RandomSampler(seed=seed)
    elif kind == "CMAES":
        base = CmaEsSampler(seed=seed, warn_independent_sampling=False, **startup)
    elif kind == "GP":
        base = GPSampler(seed=seed, **startup)
    elif kind in ("NSGAII", "NSGAIII"):
        genetic = NSGAIISampler if kind == "NSGAII" else NSGAIIISampler
        kwargs: dict[str, Any] = {}
        if sampler.population_size is not None:
            kwargs["population_size"] = sampler.population_size
        base = genetic(seed=seed, **kwargs)
    else:
        base = QMCSampler(seed=sampler.seed, warn_independent_sampling=False)
    if fixed:
        return PartialFixedSampler(dict(fixed), base)
    return base


def max_pruning_steps(spec: StudySpec) -> int:
    """Steps a trial reports at most: its folds, or folds × the largest epoch count."""
    if report_every(spec) == "Fold" or spec.pruner.type == "Wilcoxon":
        return spec.training.folds
    return spec.training.folds * max_epochs(spec)


def build_pruner(spec: StudySpec) -> BasePruner:
    p: PrunerSpec = spec.pruner
    steps = max_pruning_steps(spec)
    startup = p.n_startup_trials
    warmup = p.n_warmup_steps
    pruner: BasePruner
    if p.type == "Nop":
        pruner = NopPruner()
    elif p.type == "Median":
        pruner = MedianPruner(
            n_startup_trials=5 if startup is None else startup,
            n_warmup_steps=0 if warmup is None else warmup,
        )
    elif p.type == "Percentile":
        assert p.percentile_value is not None
        pruner = PercentilePruner(
            p.percentile_value,
            n_startup_trials=5 if startup is None else startup,
            n_warmup_steps=0 if warmup is None else warmup,
        )
    elif p.type in ("Hyperband", "SuccessiveHalving"):
        # Not given: chosen from the schedule (kubetune_study.pruning).
        min_resource, eta = halving_resources(steps, p.min_resource, p.reduction_factor)
        if p.type == "Hyperband":
            pruner = HyperbandPruner(
                min_resource=min_resource,
                max_resource=p.max_resource or max(steps, 2),
                reduction_factor=eta,
            )
        else:
            pruner = SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=eta)
    elif p.type == "MOASHA":
        factor = p.reduction_factor or 3
        # By default the first rung is at 1/factor of the steps: judged earlier, after its first
        # or a ninth of its epochs, the benchmark's fronts lost up to 12% of their hypervolume.
        pruner = MOASHAPruner(
            min_resource=p.min_resource or max(1, steps // factor), reduction_factor=factor
        )
    else:
        pruner = WilcoxonPruner(
            p_threshold=p.p_threshold_value if p.p_threshold_value is not None else 0.1,
            n_startup_steps=0 if warmup is None else warmup,
        )
    if p.patience is not None:
        pruner = PatientPruner(
            pruner,
            patience=p.patience,
            min_delta=p.min_delta_value if p.min_delta_value is not None else 0.0,
        )
    return pruner


def step_reporter(trial: optuna.Trial, spec: StudySpec) -> optuna.Trial | IntermediateVectors:
    """What a trial reports its steps through: the trial itself, or with several objectives
    (``optuna.Trial.report`` refuses them) their vectors, to the storage for MOASHA."""
    return IntermediateVectors(trial, spec.all_objectives) if spec.multi_objective else trial
