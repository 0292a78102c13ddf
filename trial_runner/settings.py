"""What a runner process reads from its environment: once, when it starts, not at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune_api.contract import STALL_FLOOR_ENV, TRIAL_LIMIT_GRACE_ENV, WAIT_SECONDS_ENV
from trial_runner.watchdog import LIMIT_GRACE, STALL_FLOOR

__all__ = ["WAIT_SECONDS", "RunnerSettings"]

#: Seconds a runner waits before asking again when it may not claim a trial yet (default).
WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class RunnerSettings:
    """A runner process's settings (seconds), each from its environment variable."""

    #: :data:`~kubetune_api.contract.WAIT_SECONDS_ENV`.
    wait_seconds: float = WAIT_SECONDS
    #: :data:`~kubetune_api.contract.STALL_FLOOR_ENV`: the Auto stall limit's floor.
    stall_floor: float = STALL_FLOOR
    #: :data:`~kubetune_api.contract.TRIAL_LIMIT_GRACE_ENV`: how long a trial past a limit has
    #: to stop at its next step before it is ended from outside.
    limit_grace: float = LIMIT_GRACE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerSettings:
        env = os.environ if environ is None else environ

        def seconds(name: str, default: float) -> float:
            return float(env.get(name, str(default)))

        return cls(
            wait_seconds=seconds(WAIT_SECONDS_ENV, WAIT_SECONDS),
            stall_floor=seconds(STALL_FLOOR_ENV, STALL_FLOOR),
            limit_grace=seconds(TRIAL_LIMIT_GRACE_ENV, LIMIT_GRACE),
        )
