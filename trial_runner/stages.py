"""What a trial claimed in a stage samples from: the parameters the stage fixes at the best of
the stages before it, and the rest from the study's sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.samplers import BaseSampler

from kubetune_api.spec import Objective, StudySpec, best_first_key
from kubetune_study.progress import Claim, StudyProgress
from kubetune_study.search import build_sampler, fixed_params_for_stage

__all__ = ["best_params_before", "sampler_for_claim"]


def sampler_for_claim(spec: StudySpec, progress: StudyProgress, claim: Claim) -> BaseSampler:
    """The sampler of the claimed trial: seeded past the study's trials, with the claimed
    stage's fixed parameters."""
    best_earlier = best_params_before(progress, claim, spec.all_objectives)
    return build_sampler(
        spec,
        seed_offset=progress.trials_total,
        fixed=fixed_params_for_stage(spec, claim.stage, best_earlier),
    )


def best_params_before(
    progress: StudyProgress, claim: Claim, objectives: Objective | Sequence[Objective]
) -> dict[str, Any] | None:
    """Parameters of the best trial of the stages before the claimed one (the first of
    equals; with several objectives, best by the first objective, ties by the next)."""
    listed = [objectives] if isinstance(objectives, Objective) else list(objectives)
    directions = [o.direction for o in listed]
    best: tuple[tuple[float, ...], dict[str, Any]] | None = None
    for row in progress.stages[: claim.stage]:
        if row.best_values is None or row.best_params is None:
            continue
        key = best_first_key(directions, row.best_values)
        if best is None or key < best[0]:
            best = (key, row.best_params)
    return best[1] if best else None
