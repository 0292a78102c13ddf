"""The runner process loop, on a journal storage in a temporary directory (no server)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from prometheus_client import CollectorRegistry
from torch import nn

from kubetune_api.contract import (
    FOLDS_ATTR,
    PREEMPTED_ATTR,
    PROFILE_ATTR,
    STAGE_ATTR,
    TASK_LOAD_EXIT_CODE,
    TELEMETRY_ATTR,
    WORKER_ATTR,
)
from kubetune_api.spec import HPOStudy
from kubetune_study.metrics import RunnerMetrics
from kubetune_study.progress import BudgetState, summarize
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.studies import small_runner_study
from trial_runner.process import configure_threads, worker_id
from trial_runner.runner import run_runner
from trial_runner.tasks.digits import DigitsMLP

#: Set by :class:`StopsWhileTraining` the way SIGTERM sets the runner's stop event.
STOP = threading.Event()


class StopsWhileTraining(DigitsMLP):
    """Asks the runner to stop once a trial's model is built (as SIGTERM would)."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        if torch.get_default_device().type != "meta":  # not the memory estimate's model
            STOP.set()
        return super().build_model(params)


def _study(
    tmp_path: Path,
    name: str,
    entrypoint: str,
    max_trials: int,
    training: dict[str, Any] | None = None,
) -> tuple[HPOStudy, str]:
    study = small_runner_study(name, entrypoint, max_trials, training)
    url = f"journal:{tmp_path}/studies.journal"
    ensure_study(open_storage(url), name, study.spec)
    return study, url


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Any:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_runner_takes_trials_until_the_budget_is_spent(tmp_path: Path) -> None:
    study, url = _study(tmp_path, "budget", "trial_runner.tasks.digits:DigitsMLP", max_trials=3)
    seen: list[int] = []
    summary = run_runner(
        study,
        url,
        "budget",
        install_signal_handlers=False,
        on_trial=lambda t: seen.append(t.number),
    )
    assert (summary.trials_run, summary.stop_reason) == (3, "budget spent")
    assert seen == [0, 1, 2]
    trials = optuna.load_study(study_name="budget", storage=open_storage(url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        assert trial.user_attrs[WORKER_ATTR] == worker_id()
        assert trial.user_attrs[STAGE_ATTR] == 0
        telemetry = trial.user_attrs[TELEMETRY_ATTR]
        assert telemetry["metrics"]["accuracy"] == trial.value
        assert telemetry["micro_batch"] >= 1 and telemetry["validation_batch"] >= 1
    assert [t.user_attrs[TELEMETRY_ATTR]["trial_in_process"] for t in trials] == [1, 2, 3]
    # Running it again finds nothing to do.
    assert run_runner(study, url, "budget", install_signal_handlers=False).trials_run == 0


def test_chosen_trials_leave_a_trace_and_every_trial_moves_the_metrics(tmp_path: Path) -> None:
    profile = {"trials": "EveryN", "every": 2, "directory": str(tmp_path / "traces")}
    study, url = _study(
        tmp_path, "traced", "trial_runner.tasks.digits:DigitsMLP", 3, {"profile": profile}
    )
    registry = CollectorRegistry()
    metrics = RunnerMetrics("", "traced", registry)
    run_runner(study, url, "traced", install_signal_handlers=False, metrics=metrics)

    trials = optuna.load_study(study_name="traced", storage=open_storage(url)).get_trials()
    traced = {
        t.number: Path(t.user_attrs[PROFILE_ATTR]) for t in trials if PROFILE_ATTR in t.user_attrs
    }
    assert sorted(traced) == [0, 2]
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == sorted(
        p.name for p in traced.values()
    )
    events = json.loads(traced[2].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    # The whole trial is in it: the model's forward (a linear layer) and the optimizer step.
    assert "aten::linear" in names, sorted(names)[:50]
    assert any(n.startswith("Optimizer.step") for n in names), sorted(names)[:50]

    labels = {"namespace": "", "study": "traced"}
    assert (
        registry.get_sample_value("kubetune_runner_trials_total", {**labels, "state": "complete"})
        == 3.0
    )
    assert registry.get_sample_value("kubetune_runner_trial_overhead_seconds_count", labels) == 3.0


def test_stop_request_releases_the_running_trial_for_another_runner(tmp_path: Path) -> None:
    entrypoint = f"{StopsWhileTraining.__module__}:StopsWhileTraining"
    study, url = _study(tmp_path, "stopped", entrypoint, max_trials=2)
    STOP.clear()
    summary = run_runner(study, url, "stopped", stop_requested=STOP, install_signal_handlers=False)
    assert (summary.trials_run, summary.stop_reason) == (1, "Interrupted")
    trials = optuna.load_study(study_name="stopped", storage=open_storage(url)).get_trials()
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs[PREEMPTED_ATTR] == "Terminated"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].params == trials[0].params
    # A stop requested between trials ends the runner before it claims another.
    assert (
        run_runner(
            study, url, "stopped", stop_requested=STOP, install_signal_handlers=False
        ).stop_reason
        == "Interrupted"
    )


class StopsAtABuild(DigitsMLP):
    """Asks the runner to stop (as SIGTERM would) when it builds its ``BUILDS_LEFT[0]``-th model
    from now: a build per fold, so 2 stops in a trial's second fold; 0 never stops."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        if torch.get_default_device().type != "meta" and BUILDS_LEFT[0] > 0:
            BUILDS_LEFT[0] -= 1
            if BUILDS_LEFT[0] == 0:
                STOP.set()
        return super().build_model(params)


BUILDS_LEFT = [0]


def test_a_stopped_trial_resumes_at_its_next_fold_in_another_runner(tmp_path: Path) -> None:
    entrypoint = f"{StopsAtABuild.__module__}:StopsAtABuild"
    study, url = _study(tmp_path, "resumed", entrypoint, max_trials=1, training={"folds": 3})
    STOP.clear()
    BUILDS_LEFT[0] = 2
    first = run_runner(study, url, "resumed", stop_requested=STOP, install_signal_handlers=False)
    assert first.stop_reason == "Interrupted"
    stored = optuna.load_study(study_name="resumed", storage=open_storage(url))
    preempted, queued = stored.get_trials()
    assert preempted.user_attrs[PREEMPTED_ATTR] == "Terminated"
    assert [f["fold"] for f in preempted.user_attrs[FOLDS_ATTR]] == [0]
    assert queued.state == TrialState.WAITING and queued.user_attrs[FOLDS_ATTR]

    STOP.clear()
    again = run_runner(study, url, "resumed", install_signal_handlers=False)
    assert (again.trials_run, again.stop_reason) == (1, "budget spent")
    preempted, resumed = stored.get_trials()
    assert resumed.state == TrialState.COMPLETE and PREEMPTED_ATTR not in resumed.user_attrs
    telemetry = resumed.user_attrs[TELEMETRY_ATTR]
    assert (telemetry["folds_run"], telemetry["folds_resumed"]) == (3, 1)
    assert telemetry["epochs_resumed"] == telemetry["epochs_run"] // 3
    # The finished fold's value is reported again at its step; the rest are the retry's own.
    assert sorted(resumed.intermediate_values) == [0, 1, 2]
    assert resumed.intermediate_values[0] == preempted.intermediate_values[0]
    progress = summarize(stored.get_trials(), BudgetState(max_trials=1), "Maximize")
    assert (progress.complete, progress.preempted, progress.failed) == (1, 1, 0)


def test_threads_are_shared_among_local_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CPU_THREADS", "1")
    assert configure_threads() == 1 == torch.get_num_threads()
    monkeypatch.delenv("KUBETUNE_CPU_THREADS")
    monkeypatch.setenv("KUBETUNE_LOCAL_WORKERS", str(4 * len(os.sched_getaffinity(0))))
    assert configure_threads() == 1  # never below one thread


class DataMissing(DigitsMLP):
    """A task whose data is not where it says."""

    def load_data(self) -> Any:
        raise FileNotFoundError("[Errno 2] No such file or directory: '/data/train.csv'")


class BadConfig(DigitsMLP):
    """A task that refuses its config when it is created."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        raise ValueError("config.repeat must be positive\nsecond line")


def _runner_pod_command(tmp_path: Path, study: HPOStudy, url: str) -> tuple[int, str]:
    """``kubetune runner`` as a runner pod runs it (the kubelet's empty termination-message
    file, no wait for the study): its exit code and termination message."""
    import signal

    from kubetune_api.spec import dump_yaml
    from trial_runner.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(study.model_dump(mode="json", by_alias=True, exclude_none=True)))
    termination = tmp_path / "termination-log"
    termination.touch()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(
            ["runner", str(path), "--storage", url, "--wait-for-study", "0",
             "--termination-message-path", str(termination)]
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, termination.read_text()


@pytest.mark.parametrize(
    ("entrypoint", "said"),
    [
        (
            "no_such_module:Task",
            "spec.task.entrypoint: cannot import module 'no_such_module'",
        ),
        (
            f"{DataMissing.__module__}:DataMissing",
            "DataMissing: loading the task's data raised FileNotFoundError: [Errno 2] No such "
            "file or directory: '/data/train.csv'",
        ),
        (
            f"{BadConfig.__module__}:BadConfig",
            f"spec.task.entrypoint: creating {BadConfig.__module__}:BadConfig raised "
            "ValueError: config.repeat must be positive",
        ),
    ],
)
def test_a_runner_whose_task_does_not_load_exits_with_its_code_and_says_why_in_one_line(
    tmp_path: Path, entrypoint: str, said: str
) -> None:
    study, url = _study(tmp_path, "broken", entrypoint, max_trials=1)
    code, message = _runner_pod_command(tmp_path, study, url)
    assert code == TASK_LOAD_EXIT_CODE
    assert said in message and "\n" not in message, message


def test_a_runner_given_a_gpu_that_cuda_cannot_use_exits_with_its_code_and_the_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator sized this runner pod for a GPU (``KUBETUNE_DEVICE_KIND``) and CUDA cannot
    use it (stand-in: ``is_available`` is False): no trial trains on the CPU, the runner says
    the CUDA versions in its termination message and exits with the code the operator reads."""
    from kubetune_api.contract import DEVICE_KIND_ENV, DEVICE_UNAVAILABLE_EXIT_CODE

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_KIND_ENV, "GPU")
    study, url = _study(tmp_path, "gpu", "trial_runner.tasks.digits:DigitsMLP", max_trials=1)
    code, message = _runner_pod_command(tmp_path, study, url)
    assert code == DEVICE_UNAVAILABLE_EXIT_CODE
    assert message.startswith("this runner was given a GPU that CUDA cannot use: torch ")
    assert "\n" not in message
    storage = open_storage(url)
    assert optuna.load_study(study_name="gpu", storage=storage).trials == []
