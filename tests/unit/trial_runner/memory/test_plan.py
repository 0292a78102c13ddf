"""Planning batches from estimates: the pure search, the largest configuration, the planners."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from tests.unit.trial_runner.memory.tasks import SEQUENCE, sample, sequence_study
from trial_runner.memory import (
    MemoryPlanner,
    MicroBatchPlan,
    NoMicroBatchFits,
    TrialPlanner,
    effective_batch_size,
    largest_configuration,
    plan_micro_batch,
)

CPU = torch.device("cpu")


def _planner(capacity: int | None = None, headroom: float = 0.1) -> MemoryPlanner:
    return MemoryPlanner(
        SEQUENCE,
        sample(SEQUENCE),
        precision="FP32",
        device=CPU,
        headroom=headroom,
        capacity_bytes=capacity,
    )


# --------------------------------------------------------------------------- the search


def test_plan_effective_100_micro_32_has_a_last_step_of_4() -> None:
    plan = plan_micro_batch(100, lambda m: m <= 32, max_micro_batch=None)
    assert plan == MicroBatchPlan(micro_batch=32, accumulation_steps=4, last_micro_batch=4)
    assert plan.sizes() == [32, 32, 32, 4]
    assert plan.effective_batch == 100
    assert plan.loss_weights() == pytest.approx([0.32, 0.32, 0.32, 0.04])
    assert sum(plan.loss_weights()) == pytest.approx(1.0)


def test_plan_takes_the_whole_batch_when_it_fits() -> None:
    calls: list[int] = []

    def fits(m: int) -> bool:
        calls.append(m)
        return True

    assert plan_micro_batch(256, fits, max_micro_batch=None) == MicroBatchPlan(256, 1, 256)
    assert calls == [256]


def test_plan_respects_max_micro_batch() -> None:
    assert plan_micro_batch(100, lambda m: True, max_micro_batch=40) == MicroBatchPlan(40, 3, 20)
    assert plan_micro_batch(30, lambda m: True, max_micro_batch=40) == MicroBatchPlan(30, 1, 30)


def test_plan_finds_the_exact_largest_size_not_only_a_power_of_two() -> None:
    plan = plan_micro_batch(100, lambda m: m <= 37, max_micro_batch=None)
    assert plan == MicroBatchPlan(37, 3, 26)


def test_plan_is_exact_for_every_threshold() -> None:
    def below(limit: int) -> Callable[[int], bool]:
        return lambda m: m <= limit

    for effective in range(1, 70):
        for limit in range(1, effective + 1):
            plan = plan_micro_batch(effective, below(limit), max_micro_batch=None)
            assert plan.micro_batch == limit, (effective, limit)
            assert plan.accumulation_steps == math.ceil(effective / limit)
            assert sum(plan.sizes()) == effective
            assert 1 <= plan.last_micro_batch <= plan.micro_batch


def test_plan_asks_few_questions() -> None:
    calls: list[int] = []

    def fits(m: int) -> bool:
        calls.append(m)
        return m <= 3

    plan = plan_micro_batch(4096, fits, max_micro_batch=None)
    assert plan.micro_batch == 3
    assert len(calls) <= 2 * math.log2(4096) + 3


def test_plan_raises_when_nothing_fits() -> None:
    with pytest.raises(NoMicroBatchFits):
        plan_micro_batch(64, lambda m: False, max_micro_batch=None)
    with pytest.raises(NoMicroBatchFits):
        plan_micro_batch(1, lambda m: False, max_micro_batch=None)
    with pytest.raises(ValueError):
        plan_micro_batch(0, lambda m: True, max_micro_batch=None)


# --------------------------------------------------------------------------- search space


def test_largest_configuration_takes_highs_and_largest_numeric_choices() -> None:
    config = largest_configuration(sequence_study().spec)
    assert config == {
        "learning_rate": 0.1,
        "batch_size": 64,
        "d_model": 48,
        "norm": "layer",
        "ff_mult": "4",
    }
    assert isinstance(config["d_model"], int)


def test_largest_configuration_over_stages_still_covers_every_searched_group() -> None:
    stages = [{"groups": ["Critical"], "trials": 3}, {"groups": ["Critical", "Model"]}]
    numeric = [
        p for p in sequence_study().spec.search_space if p.name in ("learning_rate", "d_model")
    ]
    space = [p.model_dump(by_alias=True, exclude_none=True) for p in numeric]
    config = largest_configuration(sequence_study(stages=stages, searchSpace=space).spec)
    assert config["d_model"] == 48  # searched in the second stage: its high, not its default


def test_effective_batch_size_sources() -> None:
    spec = sequence_study().spec
    assert effective_batch_size(spec, {"batch_size": 64}) == 64
    assert effective_batch_size(spec, {}) == 32
    with_effective = sequence_study(training={"effectiveBatchSize": 96}).spec
    assert effective_batch_size(with_effective, {}) == 96


# --------------------------------------------------------------------------- planners


def test_planner_picks_the_largest_micro_batch_under_the_capacity() -> None:
    params = {"d_model": 32}
    probe = _planner()
    at_16 = probe.estimate(params, 16, accumulation_steps=8).peak_bytes
    at_64 = probe.estimate(params, 64, accumulation_steps=2).peak_bytes
    whole = probe.estimate(params, 128).peak_bytes
    capacity = int((at_16 + at_64) / 2 * 1.1)
    assert whole * 1.1 > capacity  # activations dominate: the whole batch does not fit
    plan, estimate = _planner(capacity).plan_training(params, 128)
    assert 16 <= plan.micro_batch < 64
    assert plan.accumulation_steps == math.ceil(128 / plan.micro_batch)
    assert estimate.peak_bytes * 1.1 <= capacity
    over = probe.estimate(params, plan.micro_batch + 1, accumulation_steps=2).peak_bytes
    assert over * 1.1 > capacity


def test_planner_gives_validation_a_larger_batch_than_training() -> None:
    params = {"d_model": 32}
    capacity = int(_planner().estimate(params, 16, accumulation_steps=8).peak_bytes * 1.1)
    planner = _planner(capacity)
    plan, _ = planner.plan_training(params, 128)
    batch, estimate = planner.plan_validation(params, 256)
    assert batch > plan.micro_batch
    assert estimate.peak_bytes * 1.1 <= capacity
    with pytest.raises(NoMicroBatchFits):
        _planner(capacity=1).plan_validation(params, 256)


def test_trial_planner_skips_estimates_when_the_largest_configuration_fits() -> None:
    study = sequence_study()
    planner = TrialPlanner(
        study.spec,
        MemoryPlanner.for_spec(study.spec, SEQUENCE, sample(SEQUENCE), CPU),
        validation_rows=7,
    )
    estimated = len(planner.memory._estimates)  # the largest configuration's, at start-up
    batches = planner.plan_trial({"d_model": 16, "batch_size": 32}, 32)
    assert (batches.micro_batch, batches.validation_batch) == (32, 7)
    assert len(planner.memory._estimates) == estimated  # no estimate per trial
    capped = planner.plan_trial({"d_model": 16, "batch_size": 32}, 32, max_micro_batch=8)
    assert capped.micro_batch == 8  # after an OOM, what then ran


def test_trial_planner_plans_each_trial_when_the_largest_does_not_fit() -> None:
    study = sequence_study()
    largest = largest_configuration(study.spec)
    probe = MemoryPlanner.for_spec(study.spec, SEQUENCE, sample(SEQUENCE), CPU)
    full = probe.estimate(largest, 64).peak_bytes
    memory = MemoryPlanner.for_spec(
        study.spec, SEQUENCE, sample(SEQUENCE), CPU, capacity_bytes=int(full * 1.1) - 1
    )
    planner = TrialPlanner(study.spec, memory, validation_rows=7)
    assert planner.plan_trial(largest, 64).micro_batch < 64
    small = planner.plan_trial({**largest, "d_model": 16}, 64)
    assert small.micro_batch == 64 and small.estimated_peak_bytes is not None
