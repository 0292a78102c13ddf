"""Sizing: which resource a runner pod requests, from what the cluster's nodes advertise.

Pure functions over plain inputs: the node inventory (:mod:`._nodes`), the peak memory of the
largest configuration and where it came from (:mod:`._peak`), and the choice of the smallest
resource that fits it plus headroom (:mod:`._choose`).
"""

from __future__ import annotations

from hpo_operator.sizing._choose import (
    RUNNER_PROCESS_BYTES,
    NoFit,
    Sizing,
    SizingDecision,
    choose_resource,
    format_bytes,
    next_floor,
    required_bytes,
)
from hpo_operator.sizing._nodes import (
    CPU_MEMORY,
    GPU,
    GPU_MEMORY_LABEL,
    Candidate,
    NodeInfo,
    candidates,
    mig_memory_bytes,
    node_info,
)
from hpo_operator.sizing._peak import (
    Peak,
    PeakFailed,
    PeakPending,
    estimate_key,
    parse_estimate_message,
    resolve_peak,
)

__all__ = [
    "CPU_MEMORY",
    "GPU",
    "GPU_MEMORY_LABEL",
    "RUNNER_PROCESS_BYTES",
    "Candidate",
    "NoFit",
    "NodeInfo",
    "Peak",
    "PeakFailed",
    "PeakPending",
    "Sizing",
    "SizingDecision",
    "candidates",
    "choose_resource",
    "estimate_key",
    "format_bytes",
    "mig_memory_bytes",
    "next_floor",
    "node_info",
    "parse_estimate_message",
    "required_bytes",
    "resolve_peak",
]
