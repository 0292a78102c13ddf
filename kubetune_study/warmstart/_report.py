"""The report of a warm start: what it did, and what it could not carry over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MAX_LISTED", "WarmStartReport"]

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
