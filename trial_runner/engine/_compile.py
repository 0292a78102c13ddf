"""What ``torch.compile`` did during a trial: Dynamo's counters before and after it."""

from __future__ import annotations

import logging

import torch

__all__ = ["compiled_since", "dynamo_frames"]

log = logging.getLogger("kubetune.engine")


def dynamo_frames() -> tuple[int, int, int]:
    """Dynamo's counters so far: graphs compiled, frames seen, frames compiled."""
    from torch._dynamo.utils import counters

    return (
        int(counters["stats"]["unique_graphs"]),
        int(counters["frames"]["total"]),
        int(counters["frames"]["ok"]),
    )


def compiled_since(before: tuple[int, int, int]) -> tuple[int, int]:
    """Graphs compiled and frames Dynamo left to eager since ``before``. torch.compile guards
    on parameter shapes and train/eval mode, so each new width recompiles; past
    ``torch._dynamo.config.recompile_limit`` it runs the model eagerly, which is logged once
    and recorded in the trial's telemetry (``compile`` false)."""
    global _warned_eager
    after = dynamo_frames()
    graphs = after[0] - before[0]
    eager = (after[1] - before[1]) - (after[2] - before[2])
    if eager and not _warned_eager:
        _warned_eager = True
        log.warning(
            "torch.compile left %d frame(s) of this trial uncompiled (recompile limit %d "
            "reached: each new width or mode compiles again); later trials may run eager",
            eager,
            torch._dynamo.config.recompile_limit,
        )
    return graphs, eager


_warned_eager = False
