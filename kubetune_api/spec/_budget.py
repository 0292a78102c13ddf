"""How long a study runs (its budget) and where its trials are kept (its storage)."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field

from kubetune_api.contract import STORAGE_SECRET_KEY
from kubetune_api.spec._base import (
    DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS,
    NAME_PATTERN,
    STALL_TIMEOUT_PATTERN,
    SpecModel,
)
from kubetune_api.spec._parse import DURATION_PATTERN, parse_duration


class Budget(SpecModel):
    max_trials: int = Field(ge=1, le=100000, description="Finished trials the study runs.")
    max_failed_trials: int | None = Field(
        default=None, ge=0, description="Failed trials after which the study is Failed."
    )
    max_consecutive_failed_trials: int = Field(
        default=DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS,
        ge=1,
        le=100000,
        description="Trials failing in a row (none complete or pruned between them) after "
        "which the study is Failed.",
    )
    timeout: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        min_length=1,
        max_length=32,
        description="Wall-clock limit, e.g. 6h or 90m.",
    )

    trial_timeout: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        min_length=1,
        max_length=32,
        description="Wall-clock limit of one trial, e.g. 30m: a trial running longer ends "
        "Failed (TrialTimeout) and counts toward maxFailedTrials and the failure breaker.",
    )
    stall_timeout: str = Field(
        default="Auto",
        pattern=STALL_TIMEOUT_PATTERN,
        min_length=1,
        max_length=32,
        description="A trial in which no training or validation step finishes for this long "
        "ends Failed (Stalled). Auto: the larger of 5m and 10 times the slowest step its "
        "runner process has seen; before a trial's first step, the larger of 30m and 10 times "
        "the slowest first step. Or a duration such as 20m.",
    )

    @cached_property
    def timeout_seconds(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None

    @cached_property
    def trial_timeout_seconds(self) -> float | None:
        return parse_duration(self.trial_timeout) if self.trial_timeout else None

    @cached_property
    def stall_timeout_seconds(self) -> float | None:
        """``stallTimeout`` in seconds; ``None`` for ``Auto``."""
        return None if self.stall_timeout == "Auto" else parse_duration(self.stall_timeout)


class SecretKeyRef(SpecModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    key: str = Field(default=STORAGE_SECRET_KEY, min_length=1)


class Storage(SpecModel):
    secret_ref: SecretKeyRef | None = None
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to the Optuna study when the HPOStudy goes."
    )
