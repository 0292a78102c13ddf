"""The training engine on CPU with real torch: folds, steps, accumulation, OOM, warm loaders."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kubetune_api.spec import StudySpec
from tests.harness.studies import spec_model
from trial_runner import step
from trial_runner.engine import (
    Engine,
    FoldRecord,
    Interrupted,
    epochs_for_trial,
    folds_from_attr,
    folds_to_attr,
    make_folds,
)
from trial_runner.task import Task, TaskData


def make_spec(training: dict[str, Any], pruner: dict[str, Any] | None = None) -> StudySpec:
    return spec_model(
        stages=None,
        searchSpace=[
            {
                "name": "learning_rate",
                "type": "Float",
                "low": "1e-3",
                "high": "1e-1",
                "scale": "Log",
            },
            {"name": "batch_size", "type": "Categorical", "choices": [16, 32, 64]},
        ],
        training=training,
        pruner=pruner,
    )


class Blobs(Task):
    """Three Gaussian blobs: learnable in a few epochs."""

    def load_data(self) -> TaskData:
        gen = torch.Generator().manual_seed(0)
        labels = torch.arange(240) % 3
        centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
        inputs = centers[labels] + 0.6 * torch.randn(240, 2, generator=gen)
        return TaskData(inputs=inputs, targets=labels)

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


class OomAbove(Blobs):
    """Raises the CUDA out-of-memory error (or ``error``) for training micro-batches above
    ``limit`` samples, or with ``in: validation`` for validation batches above it."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        limit = int(self.config["limit"])
        in_training = self.config.get("in", "training") == "training"
        error = self.config.get("error") or torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB"
        )
        inner = super().build_model(params)

        class Guard(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if self.training == in_training and x.shape[0] > limit:
                    raise error
                return self.inner(x)  # type: ignore[no-any-return]

        return Guard()


class Recorder:
    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[int, float]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][0] >= self.prune_at


PARAMS = {"learning_rate": 0.05, "batch_size": 32}


def test_fold_reports_are_running_means_at_fold_steps() -> None:
    engine = Engine(Blobs({}), make_spec({"folds": 3, "epochs": 3}))
    recorder = Recorder()
    result = engine.run_trial(PARAMS, trial_number=0, reporter=recorder)
    steps = [s for s, _ in recorder.reports]
    assert steps == [0, 1, 2]
    assert result.telemetry["folds_run"] == 3
    assert result.value == pytest.approx(recorder.reports[-1][1])  # last step = final value
    assert result.value > 0.8  # the blobs are learnt


def test_epoch_reports_use_global_epoch_steps() -> None:
    spec = make_spec({"folds": 2, "epochs": 3, "reportEvery": "Epoch"})
    recorder = Recorder()
    Engine(Blobs({}), spec).run_trial(PARAMS, trial_number=0, reporter=recorder)
    assert [s for s, _ in recorder.reports] == [0, 1, 2, 3, 4, 5]


def test_the_default_cadence_reports_epochs_of_few_folds_to_a_stepwise_pruner() -> None:
    few = make_spec({"folds": 2, "epochs": 3}, pruner={"type": "Median"})
    recorder = Recorder()
    Engine(Blobs({}), few).run_trial(PARAMS, trial_number=0, reporter=recorder)
    assert [s for s, _ in recorder.reports] == [0, 1, 2, 3, 4, 5]
    many = make_spec({"folds": 5, "epochs": 2}, pruner={"type": "Median"})
    recorder = Recorder()
    Engine(Blobs({}), many).run_trial(PARAMS, trial_number=0, reporter=recorder)
    assert [s for s, _ in recorder.reports] == [0, 1, 2, 3, 4]


def test_pruned_trial_stops_within_one_step() -> None:
    engine = Engine(Blobs({}), make_spec({"folds": 4, "epochs": 2}))
    result = engine.run_trial(PARAMS, trial_number=0, reporter=Recorder(prune_at=1))
    assert result.pruned and result.stop_reason == "Pruned"
    assert result.telemetry["folds_run"] == 2
    assert result.telemetry["epochs_run"] == 4


def test_early_stopping_and_validation_cadence() -> None:
    spec = make_spec(
        {"epochs": 30, "validationEvery": 2, "earlyStopping": {"patience": 1, "minDelta": "0.5"}}
    )
    result = Engine(Blobs({}), spec).run_trial(PARAMS, trial_number=0)
    # Accuracy cannot improve by 0.5 twice: the second validation (epoch 4) stops the fold.
    assert result.stop_reason == "EarlyStopped"
    assert result.telemetry["epochs_run"] == 4


def test_epoch_schedule_by_trial_number() -> None:
    spec = make_spec(
        {"epochSchedule": [{"fromTrial": 0, "epochs": 1}, {"fromTrial": 3, "epochs": 4}]}
    )
    assert [epochs_for_trial(spec, n) for n in (0, 2, 3, 10)] == [1, 1, 4, 4]
    engine = Engine(Blobs({}), spec)
    assert engine.run_trial(PARAMS, trial_number=0).telemetry["epochs_run"] == 1
    assert engine.run_trial(PARAMS, trial_number=5).telemetry["epochs_run"] == 4


def test_stratified_folds_keep_class_balance() -> None:
    labels = np.array([0] * 90 + [1] * 30)
    folds = make_folds(120, 3, labels, seed=0)
    for train, val in folds:
        assert len(set(train) & set(val)) == 0
        assert (labels[val] == 1).sum() == 10
    holdout = make_folds(120, 1, labels, seed=0)
    assert len(holdout) == 1 and len(holdout[0][1]) == 24


def test_out_of_memory_halves_the_micro_batch_and_goes_on() -> None:
    spec = make_spec({"folds": 2, "epochs": 2})
    engine = Engine(OomAbove({"limit": 16}), spec)
    result = engine.run_trial({**PARAMS, "batch_size": 64}, trial_number=0)
    t = result.telemetry
    assert not result.pruned
    assert (t["micro_batch"], t["accumulation_steps"], t["oom_retries"]) == (16, 4, 2)
    assert t["effective_batch"] == 64
    # The next trial with the same batch starts from the micro-batch that fitted.
    again = engine.run_trial({**PARAMS, "batch_size": 64}, trial_number=1)
    assert again.telemetry["oom_retries"] == 0


def test_a_cuda_librarys_allocation_failure_halves_the_micro_batch_as_an_oom_does() -> None:
    """On a full shared device cuBLAS fails to allocate its workspace with a RuntimeError, not
    torch's OutOfMemoryError: the same retry at half the micro-batch."""
    error = RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    )
    engine = Engine(OomAbove({"limit": 16, "error": error}), make_spec({"folds": 2, "epochs": 1}))
    result = engine.run_trial({**PARAMS, "batch_size": 64}, trial_number=0)
    assert not result.pruned
    assert (result.telemetry["micro_batch"], result.telemetry["oom_retries"]) == (16, 2)


def test_out_of_memory_at_micro_batch_one_prunes_the_trial() -> None:
    engine = Engine(OomAbove({"limit": 0}), make_spec({"epochs": 1}))
    result = engine.run_trial({**PARAMS, "batch_size": 16}, trial_number=0)
    assert result.pruned and result.stop_reason == "OutOfMemory"
    # The process (engine) survives and runs the next, smaller-memory trial.
    ok = Engine(OomAbove({"limit": 64}), make_spec({"epochs": 1})).run_trial(PARAMS, trial_number=1)
    assert not ok.pruned


def test_bf16_autocast_on_cpu_runs_and_is_recorded() -> None:
    result = Engine(Blobs({}), make_spec({"precision": "BF16", "epochs": 2})).run_trial(
        PARAMS, trial_number=0
    )
    assert result.telemetry["precision"] == "BF16"
    assert result.value > 0.5
    auto = Engine(Blobs({}), make_spec({"epochs": 1})).run_trial(PARAMS, trial_number=0)
    assert auto.telemetry["precision"] == "FP32"  # Auto on CPU


class BlobDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, data: TaskData) -> None:
        assert isinstance(data.inputs, torch.Tensor) and data.targets is not None
        self.inputs, self.targets = data.inputs, data.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]


class BlobsAsDataset(Blobs):
    def load_data(self) -> TaskData:
        data = super().load_data()
        return TaskData(inputs=BlobDataset(data), targets=data.targets)


def test_loader_workers_persist_across_trials_and_batch_sizes() -> None:
    spec = make_spec({"epochs": 1, "dataLoaderWorkers": 2})
    engine = Engine(BlobsAsDataset({}), spec)
    assert not engine.data.on_device
    engine.run_trial({**PARAMS, "batch_size": 16}, trial_number=0)
    loader = engine.data.loader
    assert loader is not None and loader._iterator is not None
    pids = [w.pid for w in loader._iterator._workers]
    result = engine.run_trial({**PARAMS, "batch_size": 64}, trial_number=1)
    assert [w.pid for w in loader._iterator._workers] == pids
    assert result.telemetry["effective_batch"] == 64
    engine.close()


class Wide(Blobs):
    """Activations dominate (each sample becomes 32k features): micro-batches matter."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 32768), nn.ReLU(), nn.Linear(32768, 3))


def test_micro_batch_is_planned_from_the_memory_estimate() -> None:
    spec = make_spec({"epochs": 1, "precision": "FP32"})
    roomy = Engine(Wide({}), spec)
    full = roomy.run_trial({**PARAMS, "batch_size": 64}, trial_number=0)
    assert full.telemetry["micro_batch"] == 64  # everything fits in the machine's memory
    peak = full.telemetry["estimated_peak_bytes"]
    assert peak and peak > 64 * 32768 * 4  # at least the hidden activations of 64 samples

    # A device with room for about half of that (after the 10% headroom).
    capacity = int(peak * 1.1 * 0.5)
    tight = Engine(Wide({}), spec, memory_capacity_bytes=capacity)
    result = tight.run_trial({**PARAMS, "batch_size": 64}, trial_number=0)
    t = result.telemetry
    assert 8 <= t["micro_batch"] < 64
    assert t["accumulation_steps"] == -(-64 // t["micro_batch"])
    assert t["estimated_peak_bytes"] * 1.1 <= capacity
    assert t["oom_retries"] == 0


def test_compile_runs_and_is_recorded_across_trials() -> None:
    engine = Engine(Blobs({}), make_spec({"epochs": 1, "compile": True, "precision": "FP32"}))
    first = engine.run_trial(PARAMS, trial_number=0)
    second = engine.run_trial({**PARAMS, "batch_size": 16}, trial_number=1)
    assert first.telemetry["compile"] and second.telemetry["compile"]
    assert isinstance(first.model, torch._dynamo.eval_frame.OptimizedModule)
    assert first.value > 0.5 and second.value > 0.5


def test_validation_runs_at_the_largest_batch_that_fits_and_is_recorded() -> None:
    spec = make_spec({"epochs": 1, "precision": "FP32"})
    roomy = Engine(Wide({}), spec)
    rows = roomy.data.validation_rows
    full = roomy.run_trial({**PARAMS, "batch_size": 16}, trial_number=0).telemetry
    assert (full["micro_batch"], full["validation_batch"]) == (16, rows)  # the whole split
    # Room for the training step at 16 but for fewer validation rows than the split.
    eval_peak = roomy.planner.memory.estimate(PARAMS, rows, training=False).peak_bytes
    train_peak = roomy.planner.memory.estimate(PARAMS, 16).peak_bytes
    assert train_peak < eval_peak, "the test needs validation to be the larger one"
    capacity = int(train_peak * 1.1) + 1
    tight = Engine(Wide({}), spec, memory_capacity_bytes=capacity)
    t = tight.run_trial({**PARAMS, "batch_size": 16}, trial_number=0).telemetry
    assert t["micro_batch"] == 16
    assert 16 <= t["validation_batch"] < rows
    batch = t["validation_batch"]
    kept = rows - batch
    fitting = tight.planner.memory.estimate(PARAMS, batch, training=False, kept_rows=kept)
    assert fitting.peak_bytes * 1.1 <= capacity


def test_trials_train_through_the_shared_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    shared = step.train_step

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(len(args[3]))  # micro-batches of this step
        shared(*args, **kwargs)

    engine = Engine(Blobs({}), make_spec({"epochs": 1, "maxMicroBatch": 8}))
    monkeypatch.setattr(step, "train_step", counting)
    result = engine.run_trial({**PARAMS, "batch_size": 32}, trial_number=0)
    assert calls and set(calls) == {4}  # 32 samples in micro-batches of 8
    assert result.telemetry["accumulation_steps"] == 4


class SizedBlobs(Blobs):
    """Blobs that also report the model's parameter count, as DigitsMLP does."""

    def model_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"parameters": float(sum(p.numel() for p in model.parameters()))}


def two_objectives(second: str) -> StudySpec:
    return spec_model(
        stages=None,
        objective=None,
        objectives=[
            {"metric": "accuracy", "direction": "Maximize"},
            {"metric": second, "direction": "Minimize"},
        ],
        searchSpace=[
            {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "1e-1"},
            {"name": "batch_size", "type": "Categorical", "choices": [16, 32]},
        ],
        training={"folds": 2, "epochs": 3},
    )


def test_a_trial_of_several_objectives_scores_each_metric_and_the_model_itself() -> None:
    result = Engine(SizedBlobs({}), two_objectives("parameters")).run_trial(PARAMS, trial_number=0)
    assert result.metrics["parameters"] == 2 * 16 + 16 + 16 * 3 + 3  # the Blobs MLP
    assert result.value == result.metrics["accuracy"] > 0.8  # the first objective's score


def test_a_missing_objective_metric_names_the_objective() -> None:
    with pytest.raises(
        KeyError,
        match=r"spec.objectives\[1\].metric: the task returned no "
        r"metric 'latency' \(it returned: accuracy, parameters\)",
    ):
        Engine(SizedBlobs({}), two_objectives("latency")).run_trial(PARAMS, trial_number=0)


# --------------------------------------------------------------------------- resuming


class StopAfterFolds:
    """``on_fold`` that keeps each finished fold and asks the engine to stop (as SIGTERM does)
    once ``folds`` are finished: the next fold is interrupted at its first step."""

    def __init__(self, engine: Engine, folds: int) -> None:
        self.engine, self.folds = engine, folds
        self.records: list[FoldRecord] = []

    def __call__(self, record: FoldRecord) -> None:
        self.records.append(record)
        if len(self.records) == self.folds:
            self.engine.stop_requested.set()


@pytest.mark.parametrize("report_every", ["Fold", "Epoch"])
def test_a_preempted_trial_resumes_at_its_next_fold_with_the_same_history(
    report_every: str,
) -> None:
    spec = make_spec({"folds": 4, "epochs": 2, "reportEvery": report_every})
    whole = Recorder()
    uninterrupted = Engine(Blobs({}), spec).run_trial(PARAMS, trial_number=7, reporter=whole)

    engine = Engine(Blobs({}), spec)
    keep = StopAfterFolds(engine, 2)
    first = Recorder()
    with pytest.raises(Interrupted):
        engine.run_trial(PARAMS, trial_number=7, reporter=first, on_fold=keep)
    assert [r.fold for r in keep.records] == [0, 1]
    # What is kept is what the attribute holds: a JSON round trip.
    stored = json.loads(json.dumps(folds_to_attr(keep.records)))
    resume = folds_from_attr(stored, folds=4)
    assert resume == tuple(keep.records)

    engine.stop_requested.clear()
    again = Recorder()
    trained: list[FoldRecord] = []
    resumed = engine.run_trial(
        PARAMS, trial_number=7, reporter=again, resume=resume, on_fold=trained.append
    )
    # The pruner sees the same steps and values as in the trial that was never stopped.
    assert again.reports == whole.reports
    assert resumed.value == uninterrupted.value
    assert resumed.metrics == uninterrupted.metrics
    t = resumed.telemetry
    assert (t["folds_run"], t["folds_resumed"]) == (4, 2)
    assert (t["epochs_run"], t["epochs_resumed"]) == (8, 4)
    # Only the folds it trained are handed to on_fold, and not the last (the trial ends).
    assert [r.fold for r in trained] == [2]


def test_resumed_reports_meet_the_pruner_again() -> None:
    spec = make_spec({"folds": 3, "epochs": 1})
    record = FoldRecord(0, 0.5, {"accuracy": 0.5}, 1, "Completed", ((0, 0.5),))
    result = Engine(Blobs({}), spec).run_trial(
        PARAMS, trial_number=0, reporter=Recorder(prune_at=0), resume=(record,)
    )
    assert result.pruned and result.stop_reason == "Pruned"
    assert result.telemetry["folds_run"] == 1 and result.telemetry["folds_resumed"] == 1
    assert result.model is None  # nothing was trained


def test_carried_folds_that_cannot_be_read_are_trained_again() -> None:
    good = FoldRecord(0, 0.9, {"accuracy": 0.9}, 2, "Completed", ((0, 0.9),)).to_json()
    assert folds_from_attr([good], folds=3)[0].score == 0.9
    assert folds_from_attr("not a list", folds=3) == ()
    assert folds_from_attr([{**good, "stop": "Exploded"}], folds=3) == ()
    assert folds_from_attr([{**good, "fold": 1}], folds=3) == ()  # fold 0 is missing
    assert folds_from_attr([good, {**good, "fold": 5}], folds=3) == (FoldRecord.from_json(good),)
    assert folds_from_attr(None, folds=3) == ()
    nan = FoldRecord(0, float("nan"), {"accuracy": float("nan")}, 1, "Completed", ())
    assert math.isnan(folds_from_attr(json.loads(json.dumps(folds_to_attr([nan]))), 1)[0].score)


class _Stop(Exception):
    pass


def test_the_peak_memory_counter_is_reset_after_the_trial_is_planned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a GPU the trial's ``peak_memory_bytes`` is ``max_memory_allocated`` since the reset:
    planning (which may run real probe steps) comes before it. No GPU here: the engine is told
    its device is CUDA once built, the CUDA call is a stand-in, and training is not reached."""
    engine = Engine(Blobs({}), make_spec({"folds": 2, "epochs": 1}))
    events: list[str] = []
    plan = engine.plan_batches

    def planned(params: Mapping[str, Any], effective: int) -> Any:
        events.append("plan")
        return plan(params, effective)

    def train(*args: Any, **kwargs: Any) -> None:
        events.append("train")
        raise _Stop

    monkeypatch.setattr(engine, "plan_batches", planned)
    monkeypatch.setattr(engine, "_run_folds", train)
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda d=None: events.append("reset")
    )
    engine.device = torch.device("cuda", 0)
    with pytest.raises(_Stop):
        engine.run_trial(PARAMS, trial_number=0)
    assert events == ["plan", "reset", "train"]


def test_an_epochs_shuffled_batches_never_copy_the_whole_split_on_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data kept on the device is gathered in chunks of whole batches of at most GATHER_BYTES,
    in the same order as one gather of the whole split would give."""
    from trial_runner.engine import _data

    rows = 1000
    gen = torch.Generator().manual_seed(1)
    data = TaskData(inputs=torch.randn(rows, 8, generator=gen), targets=torch.arange(rows) % 3)
    folded = _data.FoldedData(data, make_spec({"folds": 2}).training, torch.device("cpu"), 0)
    assert folded.on_device
    row_bytes = 8 * 4 + 8
    monkeypatch.setattr(_data, "GATHER_BYTES", 64 * row_bytes)  # four batches of 16
    indices = np.arange(rows)
    batches = list(folded.batches(indices, 16, shuffle=True, seed=7))
    order = torch.as_tensor(indices)[
        torch.randperm(rows, generator=torch.Generator().manual_seed(7))
    ]
    assert torch.equal(torch.cat([x for x, _ in batches]), data.inputs[order])
    assert torch.equal(torch.cat([y for _, y in batches]), data.targets[order])
    assert [len(x) for x, _ in batches] == [16] * 62 + [8]
    # Each batch is a view of its gather: no gather held more than four batches' rows.
    assert max(x.untyped_storage().nbytes() for x, _ in batches) <= 64 * 8 * 4


def test_out_of_memory_in_validation_halves_the_validation_batch_and_goes_on() -> None:
    spec = make_spec({"folds": 2, "epochs": 2})
    engine = Engine(OomAbove({"limit": 20, "in": "validation"}), spec)
    result = engine.run_trial(PARAMS, trial_number=0)
    t = result.telemetry
    assert not result.pruned and result.stop_reason == "Completed"
    assert t["oom_retries"] == 0  # training's micro-batch is not the one that did not fit
    assert t["validation_batch"] <= 20
    assert result.value > 0.8


def test_out_of_memory_in_validation_at_one_row_prunes_the_trial() -> None:
    engine = Engine(
        OomAbove({"limit": 0, "in": "validation"}), make_spec({"folds": 2, "epochs": 1})
    )
    result = engine.run_trial(PARAMS, trial_number=0)
    assert result.pruned and result.stop_reason == "OutOfMemory"


class OomAboveWhenWide(OomAbove):
    """Only its wide configurations run out of memory above ``limit`` samples."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        if params.get("wide"):
            return super().build_model(params)
        return Blobs.build_model(self, params)


def test_an_out_of_memory_caps_its_own_configuration_not_every_one_with_its_batch() -> None:
    engine = Engine(OomAboveWhenWide({"limit": 16}), make_spec({"folds": 2, "epochs": 1}))
    wide = {**PARAMS, "batch_size": 64, "wide": True}
    narrow = {**PARAMS, "batch_size": 64, "wide": False}
    assert engine.run_trial(wide, trial_number=0).telemetry["micro_batch"] == 16
    # A smaller model with the same effective batch plans its own micro-batch.
    assert engine.run_trial(narrow, trial_number=1).telemetry["micro_batch"] == 64
    # The wide one again starts where it fitted.
    again = engine.run_trial(wide, trial_number=2).telemetry
    assert (again["micro_batch"], again["oom_retries"]) == (16, 0)


class Widths(Blobs):
    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        hidden = int(params["hidden"])
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_a_trial_that_dynamo_left_uncompiled_is_recorded_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.compile guards on parameter shapes: each new width compiles again, and past the
    recompile limit (2 here: train and eval mode) Dynamo runs the model eagerly; the telemetry
    says so instead of ``compile: true``. Dynamo's eager backend stands in for inductor (same
    guards, no C++)."""
    import functools

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)  # train and eval
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    engine = Engine(Widths({}), make_spec({"folds": 2, "epochs": 1, "compile": True}))
    first = engine.run_trial({**PARAMS, "hidden": 16}, trial_number=0).telemetry
    assert first["compile"] and first["compile_graphs"] >= 1
    wider = engine.run_trial({**PARAMS, "hidden": 32}, trial_number=1).telemetry
    assert not wider["compile"]
    torch._dynamo.reset()
