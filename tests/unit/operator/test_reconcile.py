"""The reconcile decision, one state transition per test."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hpo_operator.config import RunnerStartPolicy
from hpo_operator.reconcile import (
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    ObservedPod,
    Plan,
    StartFailure,
    WriteBest,
    WriteFront,
    decide,
    observe_pod,
    with_mount_failure,
)
from hpo_operator.sizing import NoFit, Peak, PeakFailed, PeakPending, SizingDecision

from kubetune_api.contract import DEVICE_UNAVAILABLE_EXIT_CODE, TASK_LOAD_EXIT_CODE
from kubetune_api.status import StartFailureReason, StudyStatus, set_condition
from kubetune_study.pareto import ParetoPoint
from kubetune_study.progress import TelemetrySummary
from kubetune_study.warmstart import WarmStartReport
from tests.unit.operator.data import NOW, laid_out, make_progress, make_spec

CPU = SizingDecision("CPU", "memory", "1Gi", 2**30, 2**30, Peak(2**30, "Memory"), "cpu 1Gi")
MIG1 = SizingDecision(
    "MIG", "nvidia.com/mig-1g.10gb", "1", 10 * 10**9, 6 * 2**30, Peak(5 * 2**30, "Spec"), "1g"
)
MIG2 = SizingDecision(
    "MIG", "nvidia.com/mig-2g.20gb", "1", 20 * 10**9, 10**10 + 1, Peak(5 * 2**30, "Spec"), "2g"
)


def runner(index: int, phase: str = "Running", ready: bool = True, **kw: Any) -> ObservedPod:
    return ObservedPod(
        name=f"digits-runner-{index}",
        component="trial-runner",
        index=index,
        phase=phase,
        ready=ready and phase == "Running",
        **kw,
    )


def status(plan: Plan) -> dict[str, Any]:
    """The status the operator writes for ``plan`` (JSON, as users read it)."""
    return plan.status.to_api()


def condition(plan: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in status(plan)["conditions"] if c["type"] == type_)


def creates(plan: Plan) -> list[int]:
    return [a.index for a in plan.actions if isinstance(a, CreateRunner)]


def deletes(plan: Plan) -> list[str]:
    return [a.name for a in plan.actions if isinstance(a, DeletePod)]


def run(
    children: list[ObservedPod] | None = None,
    progress: Any = None,
    status: StudyStatus | dict[str, Any] | None = None,
    sizing: Any = CPU,
    generation: int = 1,
    now: dt.datetime = NOW,
    policy: RunnerStartPolicy | None = None,
    **spec: Any,
) -> Plan:
    # A status from an earlier plan goes through its JSON, as the API server stores it.
    written = status.to_api() if isinstance(status, StudyStatus) else status
    study = make_spec(**spec)
    return decide(
        study,
        StudyStatus.from_api(written),
        generation,
        children or [],
        make_progress() if progress is None else progress,
        laid_out(sizing, study),
        now,
        start_policy=policy,
    )


def test_new_study_creates_parallelism_runners() -> None:
    plan = run()
    assert creates(plan) == [0, 1]
    assert all(
        a.sizing == laid_out(CPU, make_spec()) for a in plan.actions if isinstance(a, CreateRunner)
    )
    assert condition(plan, "Ready")["status"] == "False"
    assert condition(plan, "Ready")["reason"] == "RunnersStarting"
    assert status(plan)["observedGeneration"] == 1
    assert status(plan)["startTime"] == "2026-01-02T03:04:05Z"
    assert status(plan)["trialsSummary"] == "0/4"
    assert status(plan)["runnersSummary"] == "0/2"
    assert any(e.reason == "RunnersCreated" for e in plan.events)


def test_all_runners_ready_is_ready_and_creates_nothing() -> None:
    plan = run([runner(0), runner(1)], make_progress(complete=1, running=2))
    assert creates(plan) == [] and deletes(plan) == []
    ready = condition(plan, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "RunnersReady")
    assert status(plan)["runners"]["ready"] == 2
    assert status(plan)["trials"] == {
        "complete": 1,
        "pruned": 0,
        "failed": 0,
        "preempted": 0,
        "running": 2,
        "waiting": 0,
        "budget": 4,
    }


def test_restart_with_runners_present_creates_no_duplicates() -> None:
    # An operator restarted mid-study sees its own pods (deterministic names): nothing to do.
    pending = runner(1, phase="Pending", ready=False)
    plan = run([runner(0), pending], make_progress(running=1))
    assert creates(plan) == []
    assert deletes(plan) == []


def test_deleted_runner_is_recreated() -> None:
    plan = run([runner(1)], make_progress(complete=1, running=1))
    assert creates(plan) == [0]


def test_runner_being_deleted_is_not_replaced_until_gone() -> None:
    plan = run([runner(0), runner(1, deleting=True)], make_progress(running=1))
    assert creates(plan) == []
    assert deletes(plan) == []


def test_failed_runner_is_deleted_and_counted() -> None:
    failed = runner(0, phase="Failed", exit_code=1, message="Traceback\nImportError: torch")
    plan = run([failed, runner(1)], make_progress(running=1))
    assert deletes(plan) == ["digits-runner-0"]
    assert status(plan)["runners"]["failedPods"] == 1
    warning = next(e for e in plan.events if e.reason == "RunnerFailed")
    assert warning.type == "Warning" and "ImportError: torch" in warning.message
    # The replacement comes once the pod is gone.
    assert creates(plan) == []
    assert creates(run([runner(1)], make_progress(running=1), plan.status)) == [0]


def test_too_many_runner_failures_fail_the_study_until_the_spec_changes() -> None:
    status = {"observedGeneration": 1, "runners": {"failedPods": 6}}
    failed = runner(0, phase="Failed", exit_code=2)
    plan = run([failed, runner(1)], make_progress(running=1), status)
    failed_condition = condition(plan, "Failed")
    assert (failed_condition["status"], failed_condition["reason"]) == ("True", "RunnerFailures")
    assert set(deletes(plan)) == {"digits-runner-0", "digits-runner-1"}
    assert creates(plan) == []
    # Editing the spec (new generation) resets the count and runners come back.
    edited = run([], make_progress(), plan.status, generation=2)
    assert creates(edited) == [0, 1]
    assert condition(edited, "Failed")["status"] == "False"


def test_oom_killed_runner_raises_the_floor_and_waits_for_larger_sizing() -> None:
    oom = runner(
        0,
        phase="Failed",
        oom_killed=True,
        kind="MIG",
        memory_bytes=MIG1.memory_bytes,
        resource=MIG1.resource,
    )
    plan = run([oom, runner(1)], make_progress(running=1), sizing=MIG1)
    assert deletes(plan) == ["digits-runner-0"]
    assert status(plan)["sizing"]["floorBytes"] == MIG1.memory_bytes + 1
    assert status(plan)["runners"]["failedPods"] == 0  # OOM is resized, not counted
    assert any(e.reason == "OOMKilled" and e.type == "Warning" for e in plan.events)
    # The sizing this pass got predates the new floor: resizing, not "nothing fits".
    assert condition(plan, "Ready")["reason"] == "Resizing"
    assert not any(e.reason == "NoFittingResource" for e in plan.events)
    # Next pass: the handler sized with the floor; the replacement gets the larger slice.
    again = run([runner(1)], make_progress(running=1), plan.status, sizing=MIG2)
    assert [(a.index, a.sizing.resource) for a in again.actions if isinstance(a, CreateRunner)] == [
        (0, "nvidia.com/mig-2g.20gb")
    ]
    # A stale sizing below the floor creates nothing.
    stale = run([runner(1)], make_progress(running=1), plan.status, sizing=MIG1)
    assert creates(stale) == []
    assert condition(stale, "Ready")["reason"] == "NoFittingResource"


GPU3 = SizingDecision(
    "GPU",
    "nvidia.com/gpu",
    "1",
    80 * 2**30,
    15 * 2**30,
    Peak(14 * 2**30, "Spec"),
    "3 per H100",
    trials_per_device=3,
    packing="52%",
)
GPU2 = dataclasses.replace(GPU3, trials_per_device=2, packing="35%", reason="2 per H100")


def test_sizing_shows_the_trials_per_device_and_the_packing() -> None:
    plan = run(sizing=GPU3)
    sizing = status(plan)["sizing"]
    assert (sizing["trialsPerDevice"], sizing["packing"]) == (3, "52%")
    assert "trialsPerDeviceLimit" not in sizing
    created = next(e for e in plan.events if e.reason == "RunnersCreated")
    assert "3 runner processes each" in created.message
    # A new number of processes per device is announced like a new resource.
    resized = run([runner(0), runner(1)], status=plan.status, sizing=GPU2)
    assert any(e.reason == "Sized" and "2 per H100" in e.message for e in resized.events)


def test_processes_that_keep_running_out_of_memory_lower_the_trials_per_device() -> None:
    gpu = {"kind": "GPU", "memory_bytes": GPU3.memory_bytes, "resource": GPU3.resource}
    exhausted = runner(0, phase="Failed", exit_code=4, trials_per_device=3, **gpu)
    plan = run([exhausted, runner(1, trials_per_device=3)], make_progress(running=3), sizing=GPU3)
    assert deletes(plan) == ["digits-runner-0"]
    assert status(plan)["sizing"]["trialsPerDeviceLimit"] == 2
    assert status(plan)["runners"]["failedPods"] == 0  # resized, not counted as a failure
    lowered = next(e for e in plan.events if e.reason == "TrialsPerDeviceLowered")
    assert lowered.type == "Warning"
    assert "3 runner processes of digits-runner-0" in lowered.message
    assert "at most 2 per device" in lowered.message
    # This pass's sizing still says 3: nothing is created with it.
    assert condition(plan, "Ready")["reason"] == "Resizing"
    assert creates(plan) == []
    # Next pass the handler sized under the limit: the replacement runs 2 processes.
    again = run(
        [runner(1, trials_per_device=3)], make_progress(running=3), plan.status, sizing=GPU2
    )
    assert [
        (a.index, a.sizing.trials_per_device) for a in again.actions if isinstance(a, CreateRunner)
    ] == [(0, 2)]
    # The other pod of 3 goes too: no pod runs more than the limit.
    assert deletes(again) == ["digits-runner-1"]
    assert status(again)["sizing"]["trialsPerDeviceLimit"] == 2
    # A second pod of 3 that gives up later does not lower the limit below 2.
    late = runner(1, phase="Failed", exit_code=4, trials_per_device=3, **gpu)
    later = run(
        [runner(0, trials_per_device=2), late], make_progress(running=2), again.status, sizing=GPU2
    )
    assert status(later)["sizing"]["trialsPerDeviceLimit"] == 2
    assert creates(later) == []  # the pod is still there (being deleted) in this pass


def test_a_pod_whose_processes_are_no_longer_its_share_is_replaced() -> None:
    # parallelism 4 on two pods of 2 became 3: the pods now run 2 + 1.
    three = dataclasses.replace(GPU2, pods=2, trials=3)
    resources = {"accelerator": "GPU", "parallelism": 3}
    pods = [runner(0, trials_per_device=2), runner(1, trials_per_device=2)]
    plan = run(pods, make_progress(running=4), sizing=three, resources=resources)
    assert deletes(plan) == ["digits-runner-1"]
    assert creates(plan) == []  # its name is still taken in this pass
    assert status(plan)["sizing"]["pods"] == 2
    again = run([pods[0]], make_progress(running=2), plan.status, sizing=three, resources=resources)
    created = [a for a in again.actions if isinstance(a, CreateRunner)]
    assert [(a.index, a.sizing.processes(a.index)) for a in created] == [(1, 1)]
    assert status(again)["runners"]["desired"] == 2


def test_a_single_process_runner_exiting_4_is_an_ordinary_failure() -> None:
    plan = run([runner(0, phase="Failed", exit_code=4), runner(1)], make_progress(running=1))
    assert status(plan)["runners"]["failedPods"] == 1
    assert "trialsPerDeviceLimit" not in status(plan)["sizing"]


def test_runners_kueue_has_not_admitted_are_shown_waiting() -> None:
    gated = runner(1, phase="Pending", ready=False, waiting_for_admission=True)
    spec = {"accelerator": "CPU", "parallelism": 2, "memory": "1Gi", "queueName": "team-a"}
    plan = run([runner(0), gated], make_progress(running=1), resources=spec)
    ready = condition(plan, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForAdmission")
    assert ready["message"] == "1/2 runners ready; 1 wait for admission by Kueue (team-a)"
    assert status(plan)["runners"]["waitingForAdmission"] == 1
    assert creates(plan) == [] and deletes(plan) == []
    assert [e.reason for e in plan.events].count("WaitingForAdmission") == 1
    # The event is not repeated while the study keeps waiting.
    again = run([runner(0), gated], make_progress(running=1), plan.status, resources=spec)
    assert not any(e.reason == "WaitingForAdmission" for e in again.events)
    # Admitted: ready as usual.
    admitted = run([runner(0), runner(1)], make_progress(running=2), again.status, resources=spec)
    assert condition(admitted, "Ready")["reason"] == "RunnersReady"
    assert status(admitted)["runners"]["waitingForAdmission"] == 0


def test_a_runner_kueue_stopped_is_replaced_and_waits_again() -> None:
    spec = {"accelerator": "CPU", "parallelism": 1, "memory": "1Gi", "queueName": "team-a"}
    preempted = runner(0, deleting=True, stopped_by_kueue="WorkloadEvicted")
    plan = run([preempted], make_progress(running=1), resources=spec)
    assert creates(plan) == [] and deletes(plan) == []  # replaced once it is gone
    gated = runner(0, phase="Pending", ready=False, waiting_for_admission=True)
    replaced = run([gated], make_progress(waiting=1), plan.status, resources=spec)
    assert condition(replaced, "Ready")["reason"] == "WaitingForAdmission"
    assert status(replaced)["runners"]["failedPods"] == 0


def test_lowering_parallelism_deletes_extra_runners() -> None:
    plan = run(
        [runner(0), runner(1), runner(2)],
        make_progress(running=3),
        resources={"accelerator": "CPU", "parallelism": 1, "memory": "1Gi"},
    )
    assert sorted(deletes(plan)) == ["digits-runner-1", "digits-runner-2"]
    assert creates(plan) == []


def test_raising_parallelism_adds_runners() -> None:
    plan = run(
        [runner(0), runner(1)],
        make_progress(running=2),
        resources={"accelerator": "CPU", "parallelism": 3, "memory": "1Gi"},
    )
    assert creates(plan) == [2]


def test_budget_claimed_creates_no_new_pods_but_keeps_running_ones() -> None:
    progress = make_progress(complete=3, running=1, outcome="BudgetSpent")
    plan = run([runner(0), runner(1, phase="Succeeded")], progress)
    assert creates(plan) == []
    assert deletes(plan) == ["digits-runner-1"]
    assert condition(plan, "Ready")["reason"] == "Finishing"
    assert condition(plan, "Succeeded")["status"] == "False"
    assert status(plan)["runnersSummary"] == "1/1"  # runner-0 finishes its trial


def test_finished_runner_is_replaced_while_trials_remain() -> None:
    # A retried trial is waiting again: the study needs runners.
    plan = run([runner(0, phase="Succeeded")], make_progress(complete=3, waiting=1))
    assert deletes(plan) == ["digits-runner-0"]
    assert creates(plan) == [1]


def test_preempted_trials_are_shown_apart_from_failed_ones() -> None:
    running = dataclasses.replace(make_progress(complete=1, running=1, waiting=1), preempted=2)
    assert status(run([runner(0), runner(1)], running))["trials"]["preempted"] == 2
    done = dataclasses.replace(make_progress(complete=4, outcome="BudgetSpent"), preempted=2)
    message = condition(run([], done), "Succeeded")["message"]
    assert "(4 complete, 0 pruned, 0 failed, 2 preempted and resumed)" in message


def test_budget_spent_succeeds_deletes_pods_and_records_completion() -> None:
    progress = make_progress(complete=3, pruned=1, outcome="BudgetSpent", best=(0.97, 2))
    estimate = ObservedPod(name="digits-estimate", component="memory-estimate", phase="Succeeded")
    plan = run([runner(0, phase="Succeeded"), runner(1), estimate], progress)
    assert sorted(deletes(plan)) == ["digits-estimate", "digits-runner-0", "digits-runner-1"]
    succeeded = condition(plan, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "BudgetSpent")
    assert "4 trials finished" in succeeded["message"]
    assert condition(plan, "Ready")["reason"] == "Succeeded"
    assert status(plan)["completionTime"] == "2026-01-02T03:04:05Z"
    assert status(plan)["trialsSummary"] == "4/4"
    assert status(plan)["best"] == {
        "value": "0.97",
        "trial": 2,
        "params": {"learning_rate": "0.01", "batch_size": "64"},
    }
    assert [e.reason for e in plan.events if e.reason == "Succeeded"] == ["Succeeded"]
    # A second pass after success emits no second Succeeded event and keeps the time.
    later = run([], progress, plan.status, now=NOW + dt.timedelta(minutes=5))
    assert not [e for e in later.events if e.reason == "Succeeded"]
    assert status(later)["completionTime"] == "2026-01-02T03:04:05Z"
    assert condition(later, "Succeeded")["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_too_many_failed_trials_fails_the_study() -> None:
    why = "3 trials failed, reaching budget.maxFailedTrials (3)"
    progress = make_progress(complete=1, failed=3, outcome="TooManyFailures", failure=why)
    plan = run([runner(0)], progress)
    failed = condition(plan, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TooManyFailedTrials")
    assert failed["message"].startswith(why)
    assert condition(plan, "Succeeded")["status"] == "False"
    assert deletes(plan) == ["digits-runner-0"]
    assert any(e.type == "Warning" and e.reason == "Failed" for e in plan.events)


def test_trials_failing_in_a_row_fail_the_study_with_their_own_reason() -> None:
    why = "the last 10 trials failed in a row, reaching budget.maxConsecutiveFailedTrials (10)"
    progress = make_progress(failed=10, outcome="ConsecutiveFailures", failure=why)
    plan = run([runner(0), runner(1)], progress)
    failed = condition(plan, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ConsecutiveFailedTrials")
    assert failed["message"].startswith(why) and "10 failed" in failed["message"]
    assert condition(plan, "Succeeded")["reason"] == "ConsecutiveFailedTrials"
    assert condition(plan, "Ready")["reason"] == "Failed"
    assert deletes(plan) == ["digits-runner-0", "digits-runner-1"] and creates(plan) == []
    (event,) = [e for e in plan.events if e.reason == "Failed"]
    assert event.type == "Warning" and event.message.startswith(why)


def test_timed_out_study_succeeds_with_reason() -> None:
    plan = run([], make_progress(complete=2, outcome="TimedOut"))
    assert condition(plan, "Succeeded")["reason"] == "TimedOut"


def test_raised_budget_after_success_resumes_the_study() -> None:
    done = run([], make_progress(complete=4, outcome="BudgetSpent"))
    resumed = run([], make_progress(complete=4, max_trials=8), done.status, generation=2)
    assert condition(resumed, "Succeeded")["status"] == "False"
    assert creates(resumed) == [0, 1]
    assert status(resumed)["completionTime"] is None


def test_suspend_drains_runners_and_resume_recreates_them() -> None:
    suspend = {"accelerator": "CPU", "parallelism": 2, "memory": "1Gi"}
    plan = run([runner(0), runner(1)], make_progress(running=2), suspend=True, resources=suspend)
    assert sorted(deletes(plan)) == ["digits-runner-0", "digits-runner-1"]
    assert creates(plan) == []
    assert condition(plan, "Suspended")["status"] == "True"
    assert condition(plan, "Ready")["reason"] == "Suspended"
    assert any(e.reason == "Suspended" for e in plan.events)
    resumed = run([], make_progress(waiting=2), plan.status, generation=3)
    assert creates(resumed) == [0, 1]
    assert condition(resumed, "Suspended")["status"] == "False"
    assert condition(resumed, "Suspended")["reason"] == "Resumed"
    assert any(e.reason == "Resumed" for e in resumed.events)
    # The reason stays (a user who looks later still sees the study was resumed), the event
    # is not repeated.
    later = run([], make_progress(waiting=2), resumed.status, generation=3)
    assert condition(later, "Suspended")["reason"] == "Resumed"
    assert not any(e.reason == "Resumed" for e in later.events)


def test_unknown_peak_starts_one_estimate_pod() -> None:
    pending = PeakPending("key1", "estimating peak memory")
    plan = run(sizing=pending)
    assert [a for a in plan.actions if isinstance(a, CreateEstimatePod)] == [
        CreateEstimatePod("key1")
    ]
    assert creates(plan) == []
    assert condition(plan, "Ready")["reason"] == "EstimatingMemory"
    running = ObservedPod("digits-estimate", "memory-estimate", estimate_key="key1")
    again = run([running], sizing=pending, status=plan.status)
    assert not [a for a in again.actions if isinstance(a, CreateEstimatePod)]


def test_estimate_of_an_older_spec_is_replaced() -> None:
    old = ObservedPod("digits-estimate", "memory-estimate", phase="Succeeded", estimate_key="old")
    plan = run([old], sizing=PeakPending("new", "estimating"))
    assert deletes(plan) == ["digits-estimate"]
    assert [a for a in plan.actions if isinstance(a, CreateEstimatePod)] == [
        CreateEstimatePod("new")
    ]


def test_estimate_recorded_then_pod_deleted_and_runners_created() -> None:
    done = ObservedPod("digits-estimate", "memory-estimate", phase="Succeeded", estimate_key="k")
    sized = SizingDecision(
        "MIG", "nvidia.com/mig-1g.10gb", "1", 10**10, 6 * 2**30, Peak(5 * 2**30, "FakeTensor"), "r"
    )
    plan = run([done], sizing=sized)
    assert deletes(plan) == ["digits-estimate"]
    assert creates(plan) == [0, 1]
    sizing = status(plan)["sizing"]
    assert sizing["estimateKey"] == "k"
    assert (sizing["peakBytes"], sizing["method"]) == (5 * 2**30, "FakeTensor")
    assert sizing["resource"] == "nvidia.com/mig-1g.10gb"
    assert any(e.reason == "Sized" for e in plan.events)


def test_failed_estimate_reports_and_creates_nothing() -> None:
    plan = run(sizing=PeakFailed("k", "exit code 1: no module named foo"))
    assert creates(plan) == []
    ready = condition(plan, "Ready")
    assert (ready["reason"], ready["message"]) == (
        "EstimateFailed",
        "exit code 1: no module named foo",
    )
    assert any(e.type == "Warning" for e in plan.events)


def test_nothing_fits_refuses_with_a_condition() -> None:
    no_fit = NoFit(200 * 2**30, Peak(180 * 2**30, "Spec"), "needs 200Gi, but the largest ...")
    plan = run(sizing=no_fit)
    assert creates(plan) == []
    ready = condition(plan, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoFittingResource")
    assert "needs 200Gi" in ready["message"]
    assert status(plan)["sizing"]["reason"] == no_fit.reason
    assert [e.reason for e in plan.events] == ["NoFittingResource"]
    # No repeated warning on the next pass.
    assert not run(sizing=no_fit, status=plan.status).events


def test_unschedulable_runner_is_reported() -> None:
    pending = runner(0, phase="Pending", ready=False, unschedulable="0/3 nodes are available")
    plan = run([pending, runner(1)], make_progress(running=1))
    ready = condition(plan, "Ready")
    assert ready["reason"] == "Unschedulable" and "0/3 nodes" in ready["message"]


def test_better_trial_writes_the_best_configmap_once() -> None:
    plan = run([runner(0), runner(1)], make_progress(complete=2, running=2, best=(0.9, 1)))
    assert [a for a in plan.actions if isinstance(a, WriteBest)] == [
        WriteBest(0.9, {"learning_rate": 0.01, "batch_size": 64}, 1)
    ]
    assert any(e.reason == "NewBestTrial" for e in plan.events)
    same = run([runner(0), runner(1)], make_progress(complete=3, best=(0.9, 1)), plan.status)
    assert not [a for a in same.actions if isinstance(a, WriteBest)]


def test_runner_telemetry_is_summarised_for_the_wide_columns() -> None:
    progress = dataclasses.replace(
        make_progress(complete=3, pruned=2), telemetry=TelemetrySummary(0.02351, 2, 2.5)
    )
    plan = run([runner(0), runner(1)], progress)
    assert status(plan)["telemetry"] == {
        "overheadSeconds": "0.0235",
        "trialsPerProcess": "2.5",
        "processes": 2,
    }
    # Before any trial finished there is nothing to say.
    assert "telemetry" not in status(run([runner(0), runner(1)]))
    # A pass that cannot read the storage keeps what was known.
    blind = decide(make_spec(), plan.status, 1, [runner(0)], None, CPU, NOW, storage_error="x")
    assert blind.status.telemetry == plan.status.telemetry


def test_storage_unavailable_keeps_pods_and_creates_nothing() -> None:
    plan = decide(
        make_spec(), StudyStatus(), 1, [runner(0)], None, CPU, NOW, storage_error="refused"
    )
    assert plan.actions == ()
    ready = condition(plan, "Ready")
    assert (ready["reason"], ready["message"]) == (
        "StorageUnavailable",
        "cannot read the study's storage: refused",
    )


def test_condition_transition_time_changes_only_when_status_flips() -> None:
    first = set_condition([], "Ready", False, "RunnersStarting", "0/2", 1, NOW)
    later = NOW + dt.timedelta(minutes=1)
    same = set_condition(first, "Ready", False, "Unschedulable", "no nodes", 2, later)
    assert same[0].last_transition_time == "2026-01-02T03:04:05Z"
    assert (same[0].reason, same[0].observed_generation) == ("Unschedulable", 2)
    flipped = set_condition(same, "Ready", True, "RunnersReady", "2/2", 2, later)
    assert flipped[0].last_transition_time == "2026-01-02T03:05:05Z"


def test_observe_pod_reads_oom_and_termination_message() -> None:
    pod = {
        "metadata": {
            "name": "digits-runner-3",
            "labels": {
                "kubetune.dev/study": "digits",
                "app.kubernetes.io/component": "trial-runner",
            },
            "annotations": {
                "kubetune.dev/memory-bytes": "1073741824",
                "kubetune.dev/sizing-kind": "CPU",
            },
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "ready": False,
                    "state": {
                        "terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "killed"}
                    },
                }
            ],
        },
    }
    observed = observe_pod(pod)
    assert observed.index == 3
    assert observed.oom_killed and observed.exit_code == 137
    assert (observed.kind, observed.memory_bytes) == ("CPU", 2**30)
    assert observed.message == "killed"
    assert (observed.trials_per_device, observed.waiting_for_admission) == (1, False)


def test_observe_pod_reads_kueue_admission_and_stop_and_the_processes() -> None:
    pod = {
        "metadata": {
            "name": "digits-runner-0",
            "labels": {
                "kubetune.dev/study": "digits",
                "app.kubernetes.io/component": "trial-runner",
            },
            "annotations": {"kubetune.dev/trials-per-device": "3"},
            "deletionTimestamp": "2026-01-02T03:04:05Z",
        },
        "spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
                {"type": "TerminationTarget", "status": "True", "reason": "WorkloadEvicted"},
            ],
        },
    }
    observed = observe_pod(pod)
    assert observed.trials_per_device == 3
    assert observed.waiting_for_admission and observed.deleting
    assert observed.stopped_by_kueue == "WorkloadEvicted"


# --------------------------------------------------------------------------- several objectives

TWO = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


def front_progress(numbers: list[int], complete: int | None = None) -> Any:
    """Progress of a two-objective study whose front is the trials ``numbers``, in this order
    (accuracy falling and size falling along it)."""
    front = tuple(
        ParetoPoint(n, (0.99 - i / 1000, 100.0 * (len(numbers) - i)), {"learning_rate": 0.01})
        for i, n in enumerate(numbers)
    )
    return dataclasses.replace(
        make_progress(complete=len(numbers) if complete is None else complete, max_trials=40),
        pareto_front=front,
    )


def run_multi(progress: Any, status: Any = None, **kw: Any) -> Plan:
    return run([runner(0), runner(1)], progress, status, objective=None, objectives=TWO, **kw)


def test_the_front_is_in_the_status_bounded_and_written_to_the_configmap() -> None:
    plan = run_multi(front_progress(list(range(25))))
    front = status(plan)["paretoFront"]
    assert front["size"] == 25
    # At most ten, evenly spaced along the front, both ends kept.
    assert [t["trial"] for t in front["trials"]] == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24]
    assert front["trials"][0] == {
        "trial": 0,
        "values": {"accuracy": "0.99", "parameters": "2500"},
        "params": {"learning_rate": "0.01"},
    }
    assert "best" not in status(plan)
    (write,) = [a for a in plan.actions if isinstance(a, WriteFront)]
    assert len(write.front) == 25  # the ConfigMap gets every trial
    assert not [a for a in plan.actions if isinstance(a, WriteBest)]
    (event,) = [e for e in plan.events if e.reason == "ParetoFrontChanged"]
    assert event.message == "25 trial(s): 0, 3, 5, 8, 11, 13, 16, 19, 21, 24 ..."


def test_the_front_is_written_again_only_when_its_trials_change() -> None:
    first = run_multi(front_progress([1, 2, 3]))
    same = run_multi(front_progress([1, 2, 3], complete=5), first.status)
    assert not [a for a in same.actions if isinstance(a, WriteFront)]
    assert not [e for e in same.events if e.reason == "ParetoFrontChanged"]
    # A trial the status does not show is replaced: same size, same ten shown, still noticed.
    many = run_multi(front_progress(list(range(30))), first.status)
    swapped = run_multi(front_progress([0, 99, *range(2, 30)]), many.status)
    shown = status(swapped)["paretoFront"]
    assert shown["trials"] == status(many)["paretoFront"]["trials"] and shown["size"] == 30
    assert [a for a in swapped.actions if isinstance(a, WriteFront)]


def test_an_empty_front_shows_size_zero_and_writes_nothing() -> None:
    plan = run_multi(front_progress([], complete=0))
    assert status(plan)["paretoFront"] == {
        "size": 0,
        "digest": status(plan)["paretoFront"]["digest"],
        "trials": [],
    }
    assert not [a for a in plan.actions if isinstance(a, WriteFront)]


def test_a_finished_multi_objective_study_names_its_front() -> None:
    done = dataclasses.replace(front_progress([1, 2]), outcome="BudgetSpent")
    plan = run([], done, objective=None, objectives=TWO)
    assert condition(plan, "Succeeded")["status"] == "True"
    assert "Pareto front of 2 trial(s)" in condition(plan, "Succeeded")["message"]


def test_storage_outage_keeps_the_front_it_showed() -> None:
    shown = run_multi(front_progress([1, 2]))
    plan = decide(
        make_spec(objective=None, objectives=TWO),
        StudyStatus.from_api(shown.status.to_api()),
        1,
        [runner(0)],
        None,
        CPU,
        NOW,
        storage_error="refused",
    )
    assert status(plan)["paretoFront"] == status(shown)["paretoFront"]


# --------------------------------------------------------------------------- warm start


def test_warm_start_report_is_a_condition_and_one_event() -> None:
    report = WarmStartReport(
        points=1,
        points_queued=1,
        source="team-a.old",
        mode="AddTrials",
        source_trials=4,
        carried=3,
        incompatible_trials=1,
        incompatible=("trial 2: learning_rate=0.5 does not fit Float [1e-4, 1e-1] (Log)",),
    )
    plan = decide(make_spec(), StudyStatus(), 1, [], make_progress(), CPU, NOW, warm_start=report)
    warm = condition(plan, "WarmStarted")
    assert (warm["status"], warm["reason"]) == ("True", "PartlyApplied")
    assert "trial 2: learning_rate=0.5" in warm["message"]
    (event,) = [e for e in plan.events if e.reason == "WarmStarted"]
    assert event.type == "Warning" and event.message == warm["message"]
    again = decide(make_spec(), plan.status, 1, [], make_progress(), CPU, NOW, warm_start=report)
    assert not [e for e in again.events if e.reason == "WarmStarted"]
    assert condition(again, "WarmStarted") == warm
    clean = decide(
        make_spec(),
        StudyStatus(),
        1,
        [],
        make_progress(),
        CPU,
        NOW,
        warm_start=WarmStartReport(points=1, points_queued=1),
    )
    assert condition(clean, "WarmStarted")["reason"] == "Applied"
    assert [e.type for e in clean.events if e.reason == "WarmStarted"] == ["Normal"]
    missing = WarmStartReport(source="team-a.x", mode="AddTrials", source_missing=True)
    lost = decide(make_spec(), StudyStatus(), 1, [], make_progress(), CPU, NOW, warm_start=missing)
    assert condition(lost, "WarmStarted")["reason"] == "SourceNotFound"
    # A study without a warm start has no such condition.
    assert "WarmStarted" not in {c["type"] for c in status(run())["conditions"]}


# ---------------------------------------------------------------- runners that cannot start

PULL = StartFailure(StartFailureReason.IMAGE_PULL_FAILED, 'runner: pull "img:nope": not found')
POLICY = RunnerStartPolicy(attempts=3, backoff_seconds=10.0, max_backoff_seconds=600.0)


def _ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def stuck(index: int, created: dt.datetime, failure: StartFailure = PULL) -> ObservedPod:
    return runner(index, phase="Pending", ready=False, created=created, start_failure=failure)


def _pod(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    labels = {"kubetune.dev/study": "digits", "app.kubernetes.io/component": "trial-runner"}
    return {
        "metadata": {"name": "digits-runner-0", "uid": "u-1", "labels": labels, **meta},
        "status": status,
    }


def test_observe_pod_reads_why_a_runner_cannot_start() -> None:
    def waiting(reason: str, message: str) -> StartFailure | None:
        state = {"waiting": {"reason": reason, "message": message}}
        status = {"phase": "Pending", "containerStatuses": [{"name": "runner", "state": state}]}
        return observe_pod(_pod(status)).start_failure

    pulled = waiting("ErrImagePull", 'failed to pull "img:nope": not found')
    assert pulled == StartFailure(
        StartFailureReason.IMAGE_PULL_FAILED, 'runner: failed to pull "img:nope": not found'
    )
    assert waiting("ImagePullBackOff", "Back-off pulling image").reason == "ImagePullFailed"  # type: ignore[union-attr]
    config = waiting("CreateContainerConfigError", 'secret "pg" not found')
    assert config is not None and config.reason == StartFailureReason.CONFIG_MISSING
    assert 'secret "pg" not found' in config.message
    assert waiting("ContainerCreating", "") is None  # starting, not failing
    # Bounded, and a URL the message quotes loses its password.
    long = waiting("CreateContainerError", "postgresql://kt:s3cret@db/x " + "x" * 2000)
    assert long is not None and "s3cret" not in long.message and len(long.message) <= 500


def test_observe_pod_reads_a_missing_claim_from_the_scheduler_and_keeps_unschedulable() -> None:
    def scheduled(message: str) -> ObservedPod:
        condition = {"type": "PodScheduled", "status": "False", "message": message}
        return observe_pod(_pod({"phase": "Pending", "conditions": [condition]}))

    claim = scheduled('0/1 nodes are available: persistentvolumeclaim "data" not found.')
    assert claim.unschedulable is None and claim.start_failure is not None
    assert claim.start_failure.reason == StartFailureReason.VOLUME_MOUNT_FAILED
    assert 'persistentvolumeclaim "data" not found' in claim.start_failure.message
    full = scheduled("0/3 nodes are available: 3 Insufficient memory.")
    assert full.start_failure is None and full.unschedulable is not None


def test_observe_pod_reads_a_runner_given_a_gpu_cuda_cannot_use() -> None:
    message = (
        "this runner was given a GPU that CUDA cannot use: torch 2.15.0 built for CUDA 13.2; "
        "NVIDIA driver 535.104.05, which supports CUDA up to 12.2"
    )
    terminated = {"exitCode": DEVICE_UNAVAILABLE_EXIT_CODE, "message": message}
    status = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]}
    assert observe_pod(_pod(status)).start_failure == StartFailure(
        StartFailureReason.GPU_UNAVAILABLE, message
    )


def test_observe_pod_reads_a_task_that_does_not_load_and_the_pods_age() -> None:
    terminated = {
        "exitCode": TASK_LOAD_EXIT_CODE,
        "message": "spec.task.entrypoint: cannot import module 'nope'",
    }
    status = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]}
    pod = observe_pod(_pod(status, creationTimestamp="2026-01-02T03:03:05Z"))
    assert pod.start_failure == StartFailure(
        StartFailureReason.TASK_LOAD_FAILED, "spec.task.entrypoint: cannot import module 'nope'"
    )
    assert (pod.uid, pod.age(NOW)) == ("u-1", 60.0)
    # An older runner image leaves the file empty: the kubelet's log tail, its last line.
    terminated["message"] = "Traceback ...\nkubetune: cannot import module 'nope'\n"
    assert observe_pod(_pod(status)).start_failure.message == (  # type: ignore[union-attr]
        "kubetune: cannot import module 'nope'"
    )
    terminated.update(exitCode=1)
    assert observe_pod(_pod(status)).start_failure is None


def test_failed_mount_events_are_the_reason_of_a_pod_that_has_not_started() -> None:
    events = [
        ("2026-01-02T03:04:00Z", 'MountVolume.SetUp failed for volume "data": old'),
        (
            "2026-01-02T03:04:04Z",
            'MountVolume.SetUp failed for volume "data": secret "d" not found',
        ),
    ]
    pending = runner(0, phase="Pending", ready=False)
    failure = with_mount_failure(pending, events).start_failure
    assert failure is not None and failure.reason == StartFailureReason.VOLUME_MOUNT_FAILED
    assert failure.message.endswith('secret "d" not found')
    assert with_mount_failure(pending, []).start_failure is None
    assert with_mount_failure(runner(0), events).start_failure is None  # mounted, running


def test_a_runner_that_cannot_start_is_shown_at_once_and_not_replaced_yet() -> None:
    plan = run([stuck(0, _ago(2)), runner(1, phase="Pending", ready=False)], policy=POLICY)
    ready = condition(plan, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ImagePullFailed")
    assert 'digits-runner-0 cannot start: runner: pull "img:nope"' in ready["message"]
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["ImagePullFailed"]
    assert deletes(plan) == [] and creates(plan) == []
    assert "startFailure" not in status(plan)["runners"]  # shown, not counted
    # The next pass shows it again without a second event.
    again = run([stuck(0, _ago(4)), runner(1)], status=plan.status, policy=POLICY)
    assert condition(again, "Ready")["reason"] == "ImagePullFailed" and not again.events


def test_a_runner_still_failing_after_the_backoff_is_a_failed_start_then_backs_off() -> None:
    plan = run([stuck(0, _ago(11)), stuck(1, _ago(11))], policy=POLICY)
    # One wave, one failed start; both pods go.
    assert deletes(plan) == ["digits-runner-0", "digits-runner-1"]
    failure = status(plan)["runners"]["startFailure"]
    assert failure == {
        "reason": "ImagePullFailed",
        "message": 'runner digits-runner-0 cannot start: runner: pull "img:nope": not found',
        "attempts": 1,
        "lastFailureTime": "2026-01-02T03:04:05Z",
        "retryTime": "2026-01-02T03:04:15Z",
    }
    assert "1 of 3" in next(e.message for e in plan.events if e.reason == "ImagePullFailed")
    assert condition(plan, "Failed")["status"] == "False"
    # No runner is created during the back-off, even by a restarted operator (the status
    # carries it); the reason stays shown.
    waiting = run([], status=plan.status, now=NOW + dt.timedelta(seconds=5), policy=POLICY)
    assert creates(waiting) == []
    ready = condition(waiting, "Ready")
    assert ready["reason"] == "ImagePullFailed" and "created again at" in ready["message"]
    later = run([], status=plan.status, now=NOW + dt.timedelta(seconds=10), policy=POLICY)
    assert creates(later) == [0, 1]


def test_the_same_failure_every_time_fails_the_study_with_its_reason_after_the_attempts() -> None:
    now, plan_status = NOW, None
    for attempt in range(1, 4):
        # The pods of this wave were created after the last failed start was counted, and
        # are given the back-off of their attempt (10 s, 20 s, 40 s).
        age = POLICY.backoff(attempt - 1) + 1
        pods = [stuck(0, now - dt.timedelta(seconds=age))]
        plan = run(pods, status=plan_status, now=now, policy=POLICY)
        assert status(plan)["runners"]["startFailure"]["attempts"] == attempt
        plan_status, now = plan.status, now + dt.timedelta(seconds=age + 60)
    failed = condition(plan, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ImagePullFailed")
    assert "3 times in a row" in failed["message"] and 'pull "img:nope"' in failed["message"]
    assert condition(plan, "Ready")["reason"] == "ImagePullFailed"
    assert "Failed" in [e.reason for e in plan.events]
    # It stays Failed, quietly, with no runner, until the spec changes.
    after = run([], status=plan.status, now=now, policy=POLICY)
    assert condition(after, "Failed") == failed and creates(after) == [] and not after.events
    edited = run([], status=plan.status, now=now, generation=2, policy=POLICY)
    assert creates(edited) == [0, 1] and condition(edited, "Failed")["status"] == "False"


def test_a_runner_whose_task_does_not_load_is_a_failed_start_not_a_runner_failure() -> None:
    load = StartFailure(StartFailureReason.TASK_LOAD_FAILED, "cannot import module 'nope'")
    exited = runner(
        0, phase="Failed", exit_code=TASK_LOAD_EXIT_CODE, created=_ago(3), start_failure=load
    )
    plan = run([exited], policy=POLICY)
    assert deletes(plan) == ["digits-runner-0"]
    runners = status(plan)["runners"]
    assert runners["failedPods"] == 0 and runners["startFailure"]["reason"] == "TaskLoadFailed"
    ready = condition(plan, "Ready")
    assert ready["reason"] == "TaskLoadFailed" and "cannot import module 'nope'" in ready["message"]
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["TaskLoadFailed"]


def test_a_trial_running_or_finished_starts_the_count_over_a_ready_container_does_not() -> None:
    counted = run([stuck(0, _ago(11))], policy=POLICY).status
    later = NOW + dt.timedelta(seconds=30)
    # A runner's container is ready while it still loads its task (no readiness probe).
    loading = run([runner(0)], status=counted, now=later, policy=POLICY)
    assert status(loading)["runners"]["startFailure"]["attempts"] == 1
    running = run([runner(0)], make_progress(running=1), counted, now=later, policy=POLICY)
    assert "startFailure" not in status(running)["runners"]
    assert condition(running, "Ready")["reason"] == "RunnersStarting"  # 1 of 2, no failure
    finished = run([], make_progress(complete=1), counted, now=later, policy=POLICY)
    assert "startFailure" not in status(finished)["runners"]
    # Runners that got going and spent the budget in one pass: no failed start is left.
    done = run([], make_progress(complete=4, outcome="BudgetSpent"), counted, now=later)
    assert condition(done, "Succeeded")["status"] == "True"
    assert "startFailure" not in status(done)["runners"]


def test_another_reason_starts_the_count_over_at_one() -> None:
    counted = run([stuck(0, _ago(11))], policy=POLICY).status
    missing = StartFailure(StartFailureReason.CONFIG_MISSING, 'secret "pg" not found')
    later = NOW + dt.timedelta(seconds=30)
    plan = run([stuck(0, _ago(1), missing)], status=counted, now=later, policy=POLICY)
    failure = status(plan)["runners"]["startFailure"]
    assert (failure["reason"], failure["attempts"]) == ("ConfigMissing", 1)


def test_an_estimate_pod_that_cannot_start_says_why() -> None:
    pending = PeakPending("k1", "estimating")
    estimate = ObservedPod(
        name="digits-estimate",
        component="memory-estimate",
        estimate_key="k1",
        start_failure=PULL,
    )
    plan = run([estimate], sizing=pending, policy=POLICY)
    ready = condition(plan, "Ready")
    assert ready["reason"] == "ImagePullFailed"
    assert ready["message"].startswith("the memory-estimate pod cannot start: runner: pull")
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["ImagePullFailed"]
    assert deletes(plan) == [] and not any(isinstance(a, CreateEstimatePod) for a in plan.actions)
