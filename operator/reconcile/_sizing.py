"""The sizing a pass gives the decision, from what it observed (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hpo_operator.reconcile._observe import ObservedPod
from hpo_operator.reconcile._plan import SizingInput
from hpo_operator.sizing import NodeInfo, Peak, choose_resource, estimate_key, resolve_peak

from kubetune_api.contract import COMPONENT_ESTIMATE
from kubetune_api.spec import StudySpec
from kubetune_api.status import StudyStatus

__all__ = ["sizing_input"]


def sizing_input(
    spec: StudySpec,
    status: StudyStatus,
    children: Sequence[ObservedPod],
    list_nodes: Callable[[], list[NodeInfo]],
) -> SizingInput:
    """The sizing for :func:`~hpo_operator.reconcile.decide`: from the spec, the recorded
    estimate or this spec's estimate pod, then the nodes (listed only when a peak is known)."""
    key = estimate_key(spec)
    message: str | None = None
    failed: str | None = None
    for pod in children:
        if pod.component != COMPONENT_ESTIMATE or pod.estimate_key != key or pod.deleting:
            continue
        if pod.phase == "Succeeded":
            message = pod.message
        elif pod.phase == "Failed":
            detail = pod.message.splitlines()[-1] if pod.message else "no termination message"
            failed = (
                f"estimate pod exited with code {pod.exit_code}: {detail[:500]}; fix the task "
                "or set spec.resources.peakMemory"
            )
    peak = resolve_peak(spec, status.sizing, message, failed)
    if not isinstance(peak, Peak):
        return peak
    recorded = status.sizing
    floor = (recorded.floor_bytes if recorded is not None else None) or 0
    limit = recorded.trials_per_device_limit if recorded is not None else None
    return choose_resource(list_nodes(), spec, peak, floor, limit)
