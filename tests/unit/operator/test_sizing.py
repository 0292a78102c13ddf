"""Sizing: the smallest resource that fits, across realistic node inventories."""

from __future__ import annotations

import json
import math

import pytest
from hpo_operator.sizing import (
    AUTO_MAX_TRIALS_PER_DEVICE,
    CUDA_CONTEXT_BYTES,
    GpuPeak,
    NodeInfo,
    NoFit,
    Peak,
    PeakFailed,
    PeakPending,
    SizingDecision,
    choose_resource,
    estimate_key,
    lowered_trials_per_device,
    next_floor,
    node_info,
    packing_text,
    resolve_peak,
    trials_per_device,
)

from kubetune_api.status import GpuPeakStatus, SizingStatus
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


def gpu_spec(
    accelerator: str = "Auto",
    headroom: str = "0.1",
    trials: int | str = "Auto",
    parallelism: int = 8,
) -> object:
    return make_spec(
        resources={
            "accelerator": accelerator,
            "parallelism": parallelism,
            "memoryHeadroom": headroom,
            "trialsPerDevice": trials,
        }
    )


def decide(
    nodes: list[NodeInfo],
    peak_gib: float,
    accelerator: str = "Auto",
    floor: int = 0,
    trials: int | str = "Auto",
    limit: int | None = None,
    parallelism: int = 8,
):
    """The sizing of ``parallelism`` trials at once (8 by default: enough to fill a GPU)."""
    spec = gpu_spec(accelerator, trials=trials, parallelism=parallelism)
    peak = Peak(int(peak_gib * GIB), "FakeTensor")
    return choose_resource(nodes, spec, peak, floor, limit)  # type: ignore[arg-type]


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
    # One trial at once: the smallest resource that fits.
    decision = decide(MIXED, peak_gib, parallelism=1)
    assert isinstance(decision, SizingDecision)
    assert decision.resource == expected
    assert decision.quantity == "1"
    assert decision.memory_bytes >= decision.required_bytes
    assert expected in decision.reason
    assert (decision.trials_per_device, decision.pods) == (1, 1)


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
    assert decide(nodes, 10, trials=1).memory_bytes == 15360 * 2**20  # type: ignore[union-attr]
    assert decide(nodes, 16, trials=1).memory_bytes == 23034 * 2**20  # type: ignore[union-attr]
    assert decide(nodes, 40, trials=1).memory_bytes == 81559 * 2**20  # type: ignore[union-attr]


# --------------------------------------------------------------------------- packing

H100 = 81559  # MiB, as GPU Feature Discovery labels an H100 80GB


@pytest.mark.parametrize(
    ("peak_gib", "trials", "pods", "packing"),
    [
        # 6 GiB + 10 % + a CUDA context fits 11 times: the 8 trials share one GPU (60 %).
        (6, 8, 1, "60%"),
        # 14 GiB + 10 % + context = 15.9 GiB: 5 fit a GPU, so 8 take two, 4 on each (70 %).
        (14, 4, 2, "70%"),
        # 40 GiB + 10 % fits once; no room for a second: a GPU per trial.
        (40, 1, 8, "50%"),
    ],
)
def test_small_models_share_a_large_gpu(
    peak_gib: float, trials: int, pods: int, packing: str
) -> None:
    decision = decide([gpu_node("h100", H100)], peak_gib)
    assert isinstance(decision, SizingDecision)
    assert (decision.resource, decision.quantity) == ("nvidia.com/gpu", "1")
    assert (decision.trials_per_device, decision.pods, decision.packing) == (trials, pods, packing)
    # Exactly the parallelism runs, spread evenly over the pods.
    assert sum(decision.processes(i) for i in range(pods)) == 8
    assert {decision.processes(i) for i in range(pods)} == {trials}
    # Each process's need and its CUDA context fit in the GPU together.
    assert trials == 1 or trials * (decision.required_bytes + CUDA_CONTEXT_BYTES) <= (
        decision.memory_bytes
    )
    if trials > 1:
        assert f"{trials} trials per device, packing {packing}" in decision.reason
    assert "for 8 trials at once" in decision.reason


def test_parallelism_is_the_trials_that_run_not_a_multiple_of_them() -> None:
    # 9 GiB on a MIG cluster with free 2g.20gb slices: one trial at once takes one 2g.20gb
    # slice, not a 7g.80gb slice (a whole GPU) running 7.
    nodes = [
        mig_node("h100-mig-0", {"2g.20gb": 3}, mib={"2g.20gb": 20480}),
        mig_node("h100-mig-1", {"7g.80gb": 1}, mib={"7g.80gb": 81920}),
    ]
    one = decide(nodes, 9, parallelism=1)
    assert isinstance(one, SizingDecision)
    assert (one.resource, one.pods, one.trials_per_device) == ("nvidia.com/mig-2g.20gb", 1, 1)
    assert one.processes(0) == 1
    # Three at once: the three slices (60 GiB), not the whole GPU (80 GiB).
    three = decide(nodes, 9, parallelism=3)
    assert (three.resource, three.pods) == ("nvidia.com/mig-2g.20gb", 3)  # type: ignore[union-attr]
    # Five: more than the slices there are; one 7g.80gb holds all five (9.9 + 0.5 GiB each).
    five = decide(nodes, 9, parallelism=5)
    assert isinstance(five, SizingDecision)
    assert (five.resource, five.pods, five.trials_per_device) == ("nvidia.com/mig-7g.80gb", 1, 5)


def test_an_uneven_parallelism_is_spread_evenly_over_the_pods() -> None:
    # 14 GiB: 5 fit an H100; 7 at once take two, 4 and 3.
    decision = decide([gpu_node("h100", H100)], 14, parallelism=7)
    assert isinstance(decision, SizingDecision)
    assert (decision.pods, decision.trials_per_device) == (2, 4)
    assert [decision.processes(i) for i in range(2)] == [4, 3]
    assert decision.for_pod(1).trials_per_device == 3
    assert "2 runner pods of up to 4 runner processes for 7 trials at once" in decision.reason


def test_auto_never_packs_more_than_its_maximum() -> None:
    decision = decide([gpu_node("h100", H100)], 0.1, parallelism=16)
    assert isinstance(decision, SizingDecision)
    assert (decision.trials_per_device, decision.pods) == (AUTO_MAX_TRIALS_PER_DEVICE, 2)
    twenty = decide([gpu_node("h100", H100)], 0.1, parallelism=20)
    assert isinstance(twenty, SizingDecision)
    assert [twenty.processes(i) for i in range(twenty.pods)] == [7, 7, 6]


def test_a_mig_slice_per_trial_wins_a_tie_with_a_shared_gpu() -> None:
    # 14.5 GiB + 10 % = 16 GiB: a whole 80 GiB GPU holds 4, a 2g.20gb slice (20480 MiB) one.
    # Four at once: one GPU or four slices, 80 GiB either way: the slices win the tie (each
    # isolates its trial).
    gpu = NodeInfo("h100", {"nvidia.com/gpu": "8"}, {"nvidia.com/gpu.memory": "81920"})
    slices = [mig_node(f"h100-mig-{i}", {"2g.20gb": 3}, mib={"2g.20gb": 20480}) for i in range(2)]
    decision = decide([gpu, *slices], 16 / 1.1, parallelism=4)
    assert isinstance(decision, SizingDecision)
    assert (decision.resource, decision.trials_per_device) == ("nvidia.com/mig-2g.20gb", 1)
    # 12 GiB + 10 % = 13.2 GiB, five at once: the GPU holds all five (80 GiB), five slices
    # reserve 100 GiB.
    larger = decide([gpu, *slices], 12, parallelism=5)
    assert isinstance(larger, SizingDecision)
    assert (larger.resource, larger.trials_per_device, larger.pods) == ("nvidia.com/gpu", 5, 1)


@pytest.mark.parametrize(
    ("peak_gib", "parallelism", "resource", "trials", "pods"),
    [
        # 5.5 GiB, 8 at once: three 2g.20gb slices (3 + 3 + 2: 56 GiB) reserve less than two
        # 3g.40gb (75 GiB) or an H100 (80 GiB); the seven 1g.10gb slices are too few.
        (5, 8, "nvidia.com/mig-2g.20gb", 3, 3),
        # 13.2 GiB: 5 on an H100, so two H100s (4 + 4); the slices are too few.
        (12, 8, "nvidia.com/gpu", 4, 2),
        # 33 GiB, one at once: a 3g.40gb slice (37 GiB) beats the H100.
        (30, 1, "nvidia.com/mig-3g.40gb", 1, 1),
        # 8 at once: two 3g.40gb slices are too few; four H100s of 2.
        (30, 8, "nvidia.com/gpu", 2, 4),
        (60, 8, "nvidia.com/gpu", 1, 8),
    ],
)
def test_mixed_cluster_reserves_the_least_device_memory(
    peak_gib: float, parallelism: int, resource: str, trials: int, pods: int
) -> None:
    decision = decide(MIXED, peak_gib, parallelism=parallelism)
    assert isinstance(decision, SizingDecision)
    assert (decision.resource, decision.trials_per_device, decision.pods) == (
        resource,
        trials,
        pods,
    )


def test_a_smaller_gpu_shared_beats_a_larger_one_shared() -> None:
    # 5.5 GiB + context: an L4 (22.5 GiB) holds 3 (7.5 GiB each), an H100 8 (10 GiB each).
    decision = decide([gpu_node("l4", 23034), gpu_node("h100", H100)], 5)
    assert isinstance(decision, SizingDecision)
    assert (decision.memory_bytes, decision.trials_per_device) == (23034 * 2**20, 3)


def test_a_stated_number_of_trials_per_device_is_taken_as_is() -> None:
    decision = decide([gpu_node("h100", H100)], 6, trials=3)
    assert isinstance(decision, SizingDecision)
    assert (decision.trials_per_device, decision.packing) == (3, "23%")
    # The smallest GPU that holds 3: an L4 (22.5 GiB) holds 3 x (6.6 GiB + context), not
    # 3 x (7.7 GiB + context).
    nodes = [gpu_node("l4", 23034), gpu_node("h100", H100)]
    assert decide(nodes, 6, trials=3).memory_bytes == 23034 * 2**20  # type: ignore[union-attr]
    assert decide(nodes, 7, trials=3).memory_bytes == H100 * 2**20  # type: ignore[union-attr]


def test_a_stated_number_that_fits_no_device_says_so() -> None:
    result = decide([gpu_node("h100", H100)], 14, trials=6)
    assert isinstance(result, NoFit)
    assert "x 6 trials per device (spec.resources.trialsPerDevice)" in result.reason
    assert "the largest GPU, MIG slice in the cluster is nvidia.com/gpu with 80Gi" in result.reason


def test_the_limit_after_out_of_memory_exits_caps_auto_and_a_stated_number() -> None:
    assert decide([gpu_node("h100", H100)], 6, limit=3).trials_per_device == 3  # type: ignore[union-attr]
    assert decide([gpu_node("h100", H100)], 6, trials=6, limit=2).trials_per_device == 2  # type: ignore[union-attr]
    # A limit higher than what fits changes nothing: 5 fit, 8 at once run 4 + 4.
    assert decide([gpu_node("h100", H100)], 14, limit=7).trials_per_device == 4  # type: ignore[union-attr]


def test_cpu_runners_run_one_process_unless_told_more() -> None:
    nodes = [cpu_node("c", "16Gi")]
    auto = decide(nodes, 2, "CPU")
    assert isinstance(auto, SizingDecision)
    assert (auto.trials_per_device, auto.quantity, auto.packing) == (1, "3277Mi", None)
    three = decide(nodes, 2, "CPU", trials=3)
    assert isinstance(three, SizingDecision)
    # Each process gets the same memory; the pod asks for three times it.
    assert (three.trials_per_device, three.quantity, three.pods) == (3, "3277Mi", 3)
    assert "3 runner pods of up to 3 runner processes for 8 trials at once" in three.reason
    too_many = decide(nodes, 2, "CPU", trials=5)  # 5 x 3.2 GiB > 16 GiB
    assert isinstance(too_many, NoFit)
    assert "x 5 trials per device" in too_many.reason


def test_stated_cpu_memory_is_per_process() -> None:
    spec = make_spec(
        resources={"accelerator": "CPU", "memory": "2Gi", "trialsPerDevice": 3, "parallelism": 3}
    )
    decision = choose_resource([cpu_node("c", "8Gi")], spec, Peak(GIB, "Memory"))
    assert isinstance(decision, SizingDecision)
    assert (decision.quantity, decision.trials_per_device) == ("2Gi", 3)
    lowered = choose_resource([cpu_node("c", "8Gi")], spec, Peak(GIB, "Memory"), 0, 2)
    assert lowered.trials_per_device == 2  # type: ignore[union-attr]
    assert isinstance(choose_resource([cpu_node("c", "4Gi")], spec, Peak(GIB, "Memory")), NoFit)


def test_trials_per_device_counts_processes_with_their_contexts() -> None:
    gib = GIB
    assert trials_per_device(80 * gib, 10 * gib, None) == 7  # 80 // 10.5
    assert trials_per_device(80 * gib, 81 * gib, None) == 0
    # One process pays its CUDA context too (the estimate counts tensors only).
    assert trials_per_device(10 * gib, 10 * gib, None) == 0
    assert trials_per_device(10 * gib, 10 * gib, 1) == 0
    assert trials_per_device(10 * gib, 9 * gib, None) == 1
    assert trials_per_device(10 * gib, 10 * gib, None, shared_cost=0) == 1  # CPU: no context
    assert trials_per_device(80 * gib, 10 * gib, 8) == 0  # 8 x 10.5 > 80
    assert trials_per_device(80 * gib, 10 * gib, 7) == 7
    assert trials_per_device(80 * gib, 10 * gib, 7, limit=2) == 2
    assert trials_per_device(80 * gib, 10 * gib, 8, shared_cost=0) == 8
    assert lowered_trials_per_device(4) == 3 and lowered_trials_per_device(1) == 1
    assert packing_text(6 * gib, 8, 80 * gib) == "60%"


def test_gpu_node_without_memory_label_cannot_be_sized() -> None:
    unlabeled = NodeInfo("g", {"nvidia.com/gpu": "8", "memory": "512Gi"}, {})
    result = decide([unlabeled, cpu_node("c")], 4)
    # No sizable GPU: Auto falls back to CPU, and accelerator GPU says nothing fits.
    assert isinstance(result, SizingDecision) and result.kind == "CPU"
    assert isinstance(decide([unlabeled], 4, "GPU"), NoFit)


def test_accelerator_restricts_the_kind() -> None:
    assert decide(MIXED, 5, "GPU").resource == "nvidia.com/gpu"  # type: ignore[union-attr]
    mig = decide(MIXED, 5, "MIG", trials=1)
    assert mig.resource == "nvidia.com/mig-1g.10gb"  # type: ignore[union-attr]
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
    first = decide(MIXED, 5, parallelism=1)
    assert isinstance(first, SizingDecision)
    second = decide(MIXED, 5, floor=next_floor(first.kind, first.memory_bytes), parallelism=1)
    assert isinstance(second, SizingDecision)
    assert second.resource == "nvidia.com/mig-2g.20gb"
    assert "after OOMKilled" in second.reason
    third = decide(MIXED, 5, floor=next_floor(second.kind, second.memory_bytes), parallelism=1)
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


# --------------------------------------------------------------------------- GPU peaks

#: The estimate pod's figures: 2 GiB is what fit its own 4Gi (a micro-batch); a GPU needs 20
#: GiB for the full batch at BF16, 36 at FP32, and 3 or 4 in micro-batches of one sample.
GPU_PEAKS = Peak(
    2 * GIB, "FakeTensor", (GpuPeak("BF16", 20 * GIB, 3 * GIB), GpuPeak("FP32", 36 * GIB, 4 * GIB))
)


def gpu_with_compute(name: str, memory_mib: int, major: int | None) -> NodeInfo:
    labels = {"nvidia.com/gpu.memory": str(memory_mib)}
    if major is not None:
        labels["nvidia.com/gpu.compute.major"] = str(major)
    return NodeInfo(name, {"nvidia.com/gpu": "1"}, labels)


A100_40 = gpu_with_compute("a100", 40960, 8)  # native bfloat16
V100_32 = gpu_with_compute("v100", 32768, 7)  # none: Auto trains at FP32 there


def test_gpus_are_sized_from_the_full_batch_at_the_precision_each_trains_at() -> None:
    decision = choose_resource([A100_40, V100_32], gpu_spec(parallelism=1), GPU_PEAKS)
    assert isinstance(decision, SizingDecision)
    # Not the estimate pod's 2 GiB: 20 GiB + 10 % at BF16 on the A100; the V100 would train at
    # FP32 (36 GiB + 10 %), more than its 32 GiB.
    assert (decision.memory_bytes, decision.precision) == (40960 * 2**20, "BF16")
    assert decision.required_bytes == math.ceil(20 * GIB * 1.1)
    assert "peak 20Gi by FakeTensor at BF16" in decision.reason
    assert decision.packing == "50%"


def test_micro_batches_only_when_no_gpu_holds_the_full_batch() -> None:
    fp32 = make_spec(
        resources={"accelerator": "GPU", "parallelism": 1}, training={"precision": "FP32"}
    )
    # 36 GiB + 10 % fits neither unsplit: runners micro-batch on the smallest that holds a
    # one-sample micro-batch (4 GiB + 10 %).
    decision = choose_resource([A100_40, V100_32], fp32, GPU_PEAKS)
    assert isinstance(decision, SizingDecision)
    assert (decision.memory_bytes, decision.precision) == (32768 * 2**20, "FP32")
    assert "micro-batches of one sample" in decision.reason
    # A GPU without GPU Feature Discovery's compute label is taken to train Auto at FP32.
    unlabelled = gpu_with_compute("gpu", 40960, None)
    auto = choose_resource([unlabelled], gpu_spec(parallelism=1), GPU_PEAKS)
    assert (auto.precision, "micro-batches" in auto.reason) == ("FP32", True)  # type: ignore[union-attr]
    # Nothing holds even that: the need is said at its least.
    nothing = choose_resource([gpu_with_compute("t4", 2048, 7)], fp32, GPU_PEAKS)
    assert isinstance(nothing, NoFit)
    assert "peak 4Gi by FakeTensor at FP32, micro-batches of one sample" in nothing.reason


def test_gpu_peaks_come_from_the_estimate_pod_and_are_kept_in_the_status() -> None:
    spec = make_spec(resources={"accelerator": "Auto"})
    message = json.dumps(
        {
            "peakBytes": 2 * GIB,
            "method": "FakeTensor",
            "gpuPeaks": [
                {
                    "precision": "BF16",
                    "fullBatchPeakBytes": 20 * GIB,
                    "microBatchPeakBytes": 3 * GIB,
                },
                {
                    "precision": "FP32",
                    "fullBatchPeakBytes": 36 * GIB,
                    "microBatchPeakBytes": 4 * GIB,
                },
                {"precision": "FP16", "fullBatchPeakBytes": "lots"},  # not well formed: left out
            ],
        }
    )
    assert resolve_peak(spec, None, estimate_message=message) == GPU_PEAKS
    recorded = SizingStatus(
        estimate_key=estimate_key(spec),
        peak_bytes=2 * GIB,
        method="FakeTensor",
        gpu_peaks=[
            GpuPeakStatus(precision=g.precision, full_batch_peak_bytes=g.full_batch_bytes,
                          micro_batch_peak_bytes=g.micro_batch_bytes)
            for g in GPU_PEAKS.gpu
        ],
    )  # fmt: skip
    # As the API server gives it back.
    stored = SizingStatus.model_validate(json.loads(recorded.model_dump_json(by_alias=True)))
    assert stored.gpu_peaks is not None and stored.gpu_peaks[0].full_batch_peak_bytes == 20 * GIB
    assert resolve_peak(spec, stored) == GPU_PEAKS
