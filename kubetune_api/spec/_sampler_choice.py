"""Which sampler ``sampler: {type: Auto}`` (the default) runs, and why: a pure rule over the
spec, decided once per study so that every runner, the status and ``kubetune results`` agree.

The rule follows OptunaHub's AutoSampler (the Optuna team's ``samplers/auto_sampler``, read at
https://hub.optuna.org/samplers/auto_sampler/; it cannot be loaded at run time here):

* one objective: TPE (multivariate; grouped when the space is conditional) for a space with a
  Categorical or conditional parameter; otherwise GP for a budget of up to 250 trials, and
  beyond that CMA-ES, or TPE when the study has constraints (CMA-ES takes none);
* several objectives: TPE for a conditional space; up to 250 trials, TPE with a Categorical
  parameter or four objectives or more, else GP; beyond 250, NSGA-II (NSGA-III from four
  objectives).

AutoSampler switches sampler as trials complete (GP for its first 250, then CMA-ES warm-started
from them); kubetune decides from ``budget.maxTrials`` instead, so the choice is one sampler for
the whole study, known before it starts and shown in its status.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_api.spec._models import StudySpec

__all__ = ["AUTO_GP_BUDGET", "SamplerChoice", "choose_sampler"]

#: Budgets up to this many trials go to GP (AutoSampler's ``_MAX_BUDGET_FOR_SINGLE_GP``): a
#: Gaussian process's cost grows with the cube of its trials.
AUTO_GP_BUDGET = 250
#: From this many objectives NSGA-III replaces NSGA-II and TPE replaces GP.
MANY_OBJECTIVES = 4


@dataclass(frozen=True)
class SamplerChoice:
    """The sampler a study runs (never ``Auto``) and why."""

    type: str
    reason: str


def choose_sampler(spec: StudySpec) -> SamplerChoice:
    """The sampler of ``spec``: its ``sampler.type``, or what ``Auto`` picks."""
    if spec.sampler.type != "Auto":
        return SamplerChoice(spec.sampler.type, "set in spec.sampler.type")
    conditional = any(p.when is not None for p in spec.search_space)
    categorical = [p.name for p in spec.search_space if p.type == "Categorical"]
    budget = spec.budget.max_trials
    small = budget <= AUTO_GP_BUDGET
    size = f"a budget of {budget} trials ({'at most' if small else 'over'} {AUTO_GP_BUDGET})"
    if conditional:
        return SamplerChoice("TPE", "Auto: the search space is conditional (TPE, grouped)")
    if spec.multi_objective:
        many = len(spec.all_objectives) >= MANY_OBJECTIVES
        if not small:
            kind = "NSGAIII" if many else "NSGAII"
            return SamplerChoice(kind, f"Auto: several objectives and {size}")
        if many:
            return SamplerChoice("TPE", f"Auto: {MANY_OBJECTIVES} objectives or more and {size}")
        if categorical:
            return SamplerChoice("TPE", f"Auto: Categorical parameter {categorical[0]!r}")
        return SamplerChoice("GP", f"Auto: numeric parameters only and {size}")
    if categorical:
        return SamplerChoice("TPE", f"Auto: Categorical parameter {categorical[0]!r}")
    if small:
        return SamplerChoice("GP", f"Auto: numeric parameters only and {size}")
    if spec.constraints:
        return SamplerChoice("TPE", f"Auto: constraints (CMA-ES takes none) and {size}")
    return SamplerChoice("CMAES", f"Auto: numeric parameters only and {size}")
