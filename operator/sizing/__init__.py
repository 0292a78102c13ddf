"""Sizing: which resource runner pods request, from what the cluster's nodes advertise, how
many pods, and how many runner processes share each pod's device.

Pure functions over plain inputs: the node inventory (:mod:`._nodes`), the peak memory of the
largest configuration and where it came from (:mod:`._peak`), how many processes a device of
some memory holds (:mod:`._packing`), what one process needs on each resource and how a study's
trials are laid onto it (:mod:`._layout`), and the choice of the layout that reserves the least
device memory (:mod:`._choose`).
"""

from __future__ import annotations

from hpo_operator.sizing._choose import (
    NoFit,
    Sizing,
    SizingDecision,
    choose_resource,
    next_floor,
)
from hpo_operator.sizing._layout import RUNNER_PROCESS_BYTES, format_bytes, required_bytes
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
    GpuPeak,
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
    "GpuPeak",
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
