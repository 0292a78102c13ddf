"""Sizing: the smallest resource that fits, across realistic node inventories."""

from __future__ import annotations

import json

import pytest
from hpo_operator.sizing import (
    NodeInfo,
    NoFit,
    Peak,
    PeakFailed,
    PeakPending,
    SizingDecision,
    choose_resource,
    estimate_key,
    next_floor,
    node_info,
    resolve_peak,
)
from hpo_operator.status import SizingStatus

from tests.unit.operator.data import make_spec

GIB = 2**30


def mig_node(name: str, profiles: dict[str, int], mib: dict[str, int] | None = None) -> NodeInfo:
    """An A100/H100-80GB node in the MIG mixed strategy, labelled as GPU Feature Discovery does."""
    labels = {"nvidia.com/mig.strategy": "mixed", "nvidia.com/gpu.memory": "81920"}
    for profile, _ in profiles.items():
        if mib and profile in mib:
            labels[f"nvidia.com/mig-{profile}.memory"] = str(mib[profile])
    allocatable = {f"nvidia.com/mig-{p}": str(n) for p, n in profiles.items()}
    allocatable.update({"cpu": "32", "memory": "256Gi"})
    return NodeInfo(name, allocatable, labels)


def gpu_node(name: str, memory_mib: int, gpus: int = 8) -> NodeInfo:
    return NodeInfo(
        name,
        {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
        {"nvidia.com/gpu.memory": str(memory_mib), "nvidia.com/gpu.product": "X"},
    )


def cpu_node(name: str, memory: str = "64Gi") -> NodeInfo:
    return NodeInfo(name, {"cpu": "16", "memory": memory}, {})


def gpu_spec(accelerator: str = "Auto", headroom: str = "0.1") -> object:
    return make_spec(
        resources={"accelerator": accelerator, "parallelism": 2, "memoryHeadroom": headroom}
    )


def decide(nodes: list[NodeInfo], peak_gib: float, accelerator: str = "Auto", floor: int = 0):
    spec = gpu_spec(accelerator)
    return choose_resource(nodes, spec, Peak(int(peak_gib * GIB), "FakeTensor"), floor)  # type: ignore[arg-type]


MIXED = [
    mig_node("a100-mig-0", {"1g.10gb": 7}),
    mig_node("h100-mig-0", {"2g.20gb": 3}),
    mig_node("h100-mig-1", {"3g.40gb": 2}),
    gpu_node("h100-0", 81559),
    cpu_node("cpu-0"),
]


@pytest.mark.parametrize(
    ("peak_gib", "expected"),
    [
        (5, "nvidia.com/mig-1g.10gb"),  # 5.5 GiB needed: the 1g.10gb slice
        (12, "nvidia.com/mig-2g.20gb"),  # 13.2 GiB: 1g.10gb is too small
        (30, "nvidia.com/mig-3g.40gb"),
        (60, "nvidia.com/gpu"),  # only a whole 80 GB GPU holds 66 GiB
    ],
)
def test_mig_mixed_cluster_gets_smallest_slice_that_fits(peak_gib: float, expected: str) -> None:
    decision = decide(MIXED, peak_gib)
    assert isinstance(decision, SizingDecision)
    assert decision.resource == expected
    assert decision.quantity == "1"
    assert decision.memory_bytes >= decision.required_bytes
    assert expected in decision.reason


def test_mig_memory_label_is_preferred_over_the_profile_name() -> None:
    # 1g.10gb read as 10 GB (9.3 GiB) would not fit 9.5 GiB; its label says 10240 MiB.
    node = mig_node("m", {"1g.10gb": 7}, mib={"1g.10gb": 10240})
    decision = decide([node], 9.5 / 1.1)
    assert isinstance(decision, SizingDecision)
    assert decision.resource == "nvidia.com/mig-1g.10gb"
    bare = decide([mig_node("m", {"1g.10gb": 7})], 9.5 / 1.1)
    assert isinstance(bare, NoFit)


def test_whole_gpus_of_several_sizes_smallest_first() -> None:
    nodes = [gpu_node("t4", 15360), gpu_node("l4", 23034), gpu_node("h100", 81559)]
    assert decide(nodes, 10).memory_bytes == 15360 * 2**20  # type: ignore[union-attr]
    assert decide(nodes, 16).memory_bytes == 23034 * 2**20  # type: ignore[union-attr]
    assert decide(nodes, 40).memory_bytes == 81559 * 2**20  # type: ignore[union-attr]


def test_gpu_node_without_memory_label_cannot_be_sized() -> None:
    unlabeled = NodeInfo("g", {"nvidia.com/gpu": "8", "memory": "512Gi"}, {})
    result = decide([unlabeled, cpu_node("c")], 4)
    # No sizable GPU: Auto falls back to CPU, and accelerator GPU says nothing fits.
    assert isinstance(result, SizingDecision) and result.kind == "CPU"
    assert isinstance(decide([unlabeled], 4, "GPU"), NoFit)


def test_accelerator_restricts_the_kind() -> None:
    assert decide(MIXED, 5, "GPU").resource == "nvidia.com/gpu"  # type: ignore[union-attr]
    assert decide(MIXED, 5, "MIG").resource == "nvidia.com/mig-1g.10gb"  # type: ignore[union-attr]
    cpu = decide(MIXED, 5, "CPU")
    assert isinstance(cpu, SizingDecision)
    # 5 GiB + 10 % + the runner process
    assert (cpu.kind, cpu.resource, cpu.quantity) == ("CPU", "memory", "6656Mi")


def test_auto_on_cpu_only_cluster_sizes_memory() -> None:
    decision = decide([cpu_node("c0", "8Gi"), cpu_node("c1", "32Gi")], 2)
    assert isinstance(decision, SizingDecision)
    assert decision.kind == "CPU"
    assert decision.quantity == "3277Mi"  # 2 GiB + 10 % + 1 GiB for the runner process


def test_auto_does_not_fall_back_to_cpu_when_no_gpu_fits() -> None:
    result = decide(MIXED, 100)
    assert isinstance(result, NoFit)
    assert "nvidia.com/gpu" in result.reason and "80Gi" in result.reason
    assert "h100-0" in result.reason


def test_nothing_fits_says_what_was_needed() -> None:
    result = decide([cpu_node("c", "8Gi")], 16, "CPU")
    assert isinstance(result, NoFit)
    assert "needs 19Gi" in result.reason and "1Gi runner process" in result.reason
    assert "the largest CPU node in the cluster is node c with 8Gi of memory" in result.reason
    assert "spec.resources.accelerator: CPU" in result.reason


def test_no_node_of_the_requested_kind() -> None:
    result = decide([cpu_node("c")], 1, "MIG")
    assert isinstance(result, NoFit)
    assert "no node advertises a MIG slice" in result.reason


def test_node_with_unreadable_memory_is_skipped_and_named_in_the_reason() -> None:
    broken = cpu_node("c-broken", "12Qi")
    decision = decide([broken, cpu_node("c-ok", "32Gi")], 2, "CPU")
    assert isinstance(decision, SizingDecision) and decision.kind == "CPU"
    assert "1 node(s)" in decision.reason  # only the readable node counts
    assert "node c-broken skipped: its allocatable memory '12Qi' is not a quantity" in (
        decision.reason
    )
    nothing = decide([broken], 2, "CPU")
    assert isinstance(nothing, NoFit)
    assert (
        "no node advertises a CPU node" in nothing.reason and "c-broken skipped" in nothing.reason
    )


def test_unschedulable_nodes_are_ignored() -> None:
    cordoned = NodeInfo("g", {"nvidia.com/gpu": "8"}, {"nvidia.com/gpu.memory": "81920"}, False)
    assert isinstance(decide([cordoned], 4, "GPU"), NoFit)


def test_next_larger_resource_after_oom() -> None:
    first = decide(MIXED, 5)
    assert isinstance(first, SizingDecision)
    second = decide(MIXED, 5, floor=next_floor(first.kind, first.memory_bytes))
    assert isinstance(second, SizingDecision)
    assert second.resource == "nvidia.com/mig-2g.20gb"
    assert "after OOMKilled" in second.reason
    third = decide(MIXED, 5, floor=next_floor(second.kind, second.memory_bytes))
    assert third.resource == "nvidia.com/mig-3g.40gb"  # type: ignore[union-attr]


def test_cpu_memory_grows_by_half_after_oom() -> None:
    spec = make_spec(resources={"accelerator": "CPU", "memory": "1Gi"})
    nodes = [cpu_node("c")]
    first = choose_resource(nodes, spec, Peak(GIB, "Memory"))
    assert isinstance(first, SizingDecision) and first.quantity == "1Gi"
    second = choose_resource(nodes, spec, Peak(GIB, "Memory"), next_floor("CPU", GIB))
    assert isinstance(second, SizingDecision)
    assert second.memory_bytes >= 1.5 * GIB


def test_node_info_from_api_object() -> None:
    info = node_info(
        {
            "metadata": {"name": "n1", "labels": {"nvidia.com/gpu.memory": "40960"}},
            "spec": {"unschedulable": True},
            "status": {"allocatable": {"nvidia.com/gpu": "4", "memory": "100Gi"}},
        }
    )
    assert info == NodeInfo(
        "n1", {"nvidia.com/gpu": "4", "memory": "100Gi"}, {"nvidia.com/gpu.memory": "40960"}, False
    )


# --------------------------------------------------------------------------- peak memory


def test_peak_from_spec_skips_the_estimate() -> None:
    spec = make_spec(resources={"accelerator": "MIG", "peakMemory": "12Gi"})
    assert resolve_peak(spec, None) == Peak(12 * GIB, "Spec")


def test_peak_unknown_needs_an_estimate_then_uses_its_message() -> None:
    spec = make_spec(resources={"accelerator": "Auto"})
    pending = resolve_peak(spec, SizingStatus())
    assert isinstance(pending, PeakPending) and pending.key == estimate_key(spec)
    message = json.dumps({"peakBytes": 3 * GIB, "method": "FakeTensor", "config": {}})
    assert resolve_peak(spec, None, estimate_message=message) == Peak(3 * GIB, "FakeTensor")
    recorded = SizingStatus(
        estimate_key=estimate_key(spec), peak_bytes=3 * GIB, method="FakeTensor"
    )
    assert resolve_peak(spec, recorded) == Peak(3 * GIB, "FakeTensor")


def test_recorded_estimate_is_redone_when_the_search_space_changes() -> None:
    spec = make_spec(resources={"accelerator": "Auto"})
    recorded = SizingStatus(estimate_key=estimate_key(spec), peak_bytes=GIB, method="Analytic")
    wider = make_spec(
        resources={"accelerator": "Auto"},
        searchSpace=[{"name": "batch_size", "type": "Categorical", "choices": [32, 512]}],
    )
    assert isinstance(resolve_peak(wider, recorded), PeakPending)


def test_bad_estimate_message_is_a_failure_with_the_reason() -> None:
    spec = make_spec(resources={"accelerator": "Auto"})
    failed = resolve_peak(spec, None, estimate_message="Traceback: boom")
    assert isinstance(failed, PeakFailed)
    assert "not JSON" in failed.message
    failed = resolve_peak(spec, None, estimate_failed="exit code 1: ImportError")
    assert isinstance(failed, PeakFailed) and "ImportError" in failed.message
