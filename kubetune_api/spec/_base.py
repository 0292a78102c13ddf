"""What every spec model shares: the strict camelCase base model, the patterns and bounds of
fields, and the order of scores (:func:`is_better`, :func:`best_first`, :func:`best_first_key`).

Numbers that are not counts are strings (``"1e-4"``), following the Kubernetes API convention
of no floats in specs; each model parses its own once (:func:`number_or_none`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune_api.spec._parse import parse_number

NUMBER_PATTERN = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: ``budget.stallTimeout``: ``Auto`` or a duration.
STALL_TIMEOUT_PATTERN = r"^(Auto|([0-9]+h)?([0-9]+m)?([0-9]+s)?)$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
GROUP_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
# A Kueue LocalQueue: an object name (DNS-1123 subdomain) that is also a label value.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

# Study names become pod names "<name>-runner-<n>" and Optuna study names, so they must be
# DNS-1123 labels with room for the suffix.
MAX_STUDY_NAME = 48

# Bounds on lengths and counts also keep the CRD's CEL rules within the API server's cost budget.
Number = Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
IntOrNumber = int | Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
ChoiceValue = int | Annotated[str, Field(max_length=253)]


#: Samplers Optuna can run on a study with several objectives (CMA-ES cannot).
MULTI_OBJECTIVE_SAMPLERS = ("Auto", "TPE", "NSGAII", "NSGAIII", "Random", "GP", "QMC")
#: Samplers that take constraints (``spec.constraints``): Optuna's constrained samplers.
CONSTRAINED_SAMPLERS = ("Auto", "TPE", "GP", "NSGAII", "NSGAIII")
#: Constraints a study may have.
MAX_CONSTRAINTS = 16
#: Objectives a study may have (``spec.objectives``).
MAX_OBJECTIVES = 8
#: Warm-start points a study may list.
MAX_WARM_START_POINTS = 16
#: Parameters a search space may have.
MAX_PARAMETERS = 64
#: Stages a study may have.
MAX_STAGES = 16
#: The largest ``sampler.seed``: NumPy and scikit-learn take seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
#: Failed trials in a row after which a study fails (``budget.maxConsecutiveFailedTrials``):
#: a task that fails every trial stops after a handful, not after thousands.
DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS = 10
#: Fields whose content is free-form (paths below ``spec``): kept as written, nulls included.
FREE_FORM_FIELDS: tuple[tuple[str, ...], ...] = (("task", "config"),)
#: Runner processes one runner pod may run on its device (``resources.trialsPerDevice``).
MAX_TRIALS_PER_DEVICE = 16


def is_better(direction: str, a: float, b: float, margin: float = 0.0) -> bool:
    """Whether score ``a`` beats ``b`` by more than ``margin`` under ``direction``.

    Every comparison of scores (best trial, early stopping, best stage, checkpoints) goes
    through this function, usually as :meth:`Objective.better`.
    """
    return a > b + margin if direction == "Maximize" else a < b - margin


def best_first(direction: str, value: float) -> float:
    """A sort key that puts the best score under ``direction`` first."""
    return -value if direction == "Maximize" else value


def best_first_key(directions: Sequence[str], values: Sequence[float]) -> tuple[float, ...]:
    """A sort key over several objectives: the best by the first objective first, ties broken
    by the next ones (a lexicographic order, so the first is always Pareto-optimal)."""
    return tuple(best_first(d, v) for d, v in zip(directions, values, strict=True))


class SpecModel(BaseModel):
    """Base: camelCase field names, unknown fields rejected, no silent type coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


def number_or_none(value: int | str | None) -> float | None:
    return None if value is None else parse_number(value)
