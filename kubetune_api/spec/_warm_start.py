"""Where a study starts: parameter sets to evaluate first, or another study's trials."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune_api.spec._base import (
    MAX_STUDY_NAME,
    MAX_WARM_START_POINTS,
    NAME_PATTERN,
    PARAM_NAME_PATTERN,
    ChoiceValue,
    SpecModel,
)


class ParameterValue(SpecModel):
    name: str = Field(pattern=PARAM_NAME_PATTERN, max_length=63)
    value: ChoiceValue = Field(
        description='A number for Float and Int (text such as "3e-3" for a Float), one of '
        "the choices for Categorical."
    )


class WarmStartPoint(SpecModel):
    params: list[ParameterValue] = Field(
        min_length=1,
        max_length=64,
        description="Values of searchSpace parameters; the sampler chooses the others.",
    )


class FromStudy(SpecModel):
    hpo_study: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=MAX_STUDY_NAME,
        description="An HPOStudy in the same namespace (locally: the study of that name).",
    )
    study_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="An Optuna study in the same storage, by its exact name.",
    )
    mode: Literal["AddTrials", "Reevaluate"] = Field(
        default="AddTrials",
        description="AddTrials: its complete trials inform the sampler (not counted in the "
        "budget); Reevaluate: its topK best trials are run again as the first trials.",
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="Reevaluate: how many of its best trials."
    )


class WarmStart(SpecModel):
    points: list[WarmStartPoint] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_WARM_START_POINTS,
        description="Parameter sets evaluated first, each exactly once.",
    )
    from_study: FromStudy | None = Field(
        default=None, description="Start from another study's finished trials."
    )
