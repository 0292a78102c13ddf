"""Sizing: which resource a runner pod requests, from what the cluster's nodes advertise, and
how many runner processes share it.

Pure functions over plain inputs: the node inventory (:mod:`._nodes`), the peak memory of the
largest configuration and where it came from (:mod:`._peak`), how many processes a device of
some memory holds (:mod:`._packing`), and the choice of the resource with the least memory per
trial that fits it plus headroom (:mod:`._choose`).
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
from hpo_operator.sizing._packing import (
    AUTO_MAX_TRIALS_PER_DEVICE,
    CUDA_CONTEXT_BYTES,
    lowered_trials_per_device,
    packing_text,
    trials_per_device,
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
    "AUTO_MAX_TRIALS_PER_DEVICE",
    "CPU_MEMORY",
    "CUDA_CONTEXT_BYTES",
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
    "lowered_trials_per_device",
    "mig_memory_bytes",
    "next_floor",
    "node_info",
    "packing_text",
    "parse_estimate_message",
    "required_bytes",
    "resolve_peak",
    "trials_per_device",
]
