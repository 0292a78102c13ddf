"""End-to-end: the operator against a real API server, scheduler and simulated GPU/MIG nodes.

The operator runs in this process (kopf's KopfRunner); kwok plays the kubelet of the simulated
nodes, so runner pods are scheduled but never run, which is what MIG-aware sizing, admission and
the operator's reactions to pod states need. Studies whose pods really run are in the real-node
modules (``test_real_node.py``, ``test_node_lifecycle.py``).
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hpo_operator.names import optuna_study_name
from prometheus_client import REGISTRY

from kubetune_api.spec import SpecError, dump_yaml, study_from_mapping
from tests.harness.controlplane import ControlPlane
from tests.harness.helpers import wait_until
from tests.harness.operator_fixtures import (
    StudyClient,
    add_finished_trials,
    api_requests,
    delete_studies,
    operator_env,
    run_operator,
)
from tests.harness.postgres import RestartablePostgres
from tests.harness.simulated_cluster import NodeGroup
from tests.harness.studies import load_example, small_cpu_study

pytestmark = pytest.mark.e2e


@pytest.fixture
def cpu_nodes(simulated_cluster: Callable[..., list[str]]) -> list[str]:
    return simulated_cluster([NodeGroup(count=2, cpu="8", memory="32Gi")])


def test_gpu_study_requests_the_fitting_mig_slice(
    studies: StudyClient,
    simulated_cluster: Callable[..., list[str]],
    scheduling_operator: Any,
    control_plane: ControlPlane,
) -> None:
    small_slices = simulated_cluster(
        [NodeGroup(count=1, gpu="A100-80GB", gpus=1, mig={"1g.10gb": 7}, name="a100-small")]
    )
    medium_slices = simulated_cluster(
        [NodeGroup(count=1, gpu="H100-80GB", gpus=2, mig={"2g.20gb": 3}, name="h100-medium")]
    )
    simulated_cluster([NodeGroup(count=1, cpu="16", memory="64Gi")])
    example = load_example("transformer-mig.yaml")
    name = example["metadata"]["name"]
    # 12Gi + 20% headroom does not fit a 1g.10gb slice; 2g.20gb is the smallest that does.
    example["spec"]["resources"]["peakMemory"] = "12Gi"
    parallelism = example["spec"]["resources"]["parallelism"]
    too_big = copy.deepcopy(example)
    too_big["metadata"]["name"] = "too-big"
    too_big["spec"]["resources"]["peakMemory"] = "90Gi"

    with scheduling_operator():
        studies.apply(example)
        studies.apply(too_big)

        def bound() -> list[dict[str, Any]] | None:
            pods = studies.pods(name)
            ok = len(pods) == parallelism and all(p["spec"].get("nodeName") for p in pods)
            return pods if ok else None

        pods = wait_until(bound, 60, f"{parallelism} bound runner pods", diagnose=studies.diagnose)
        for pod in pods:
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            # The stated 8Gi and the runner's /dev/shm (64Mi: no data-loader workers).
            assert limits == {"nvidia.com/mig-2g.20gb": "1", "memory": "8256Mi"}
            assert pod["spec"]["nodeName"] in medium_slices
            assert pod["spec"]["nodeName"] not in small_slices
        sizing = studies.study(name)["status"]["sizing"]  # type: ignore[index]
        assert sizing["resource"] == "nvidia.com/mig-2g.20gb"
        assert "nvidia.com/mig-2g.20gb" in sizing["reason"] and "needs" in sizing["reason"]

        refused = studies.wait_condition("too-big", "Ready", "False", 60, "NoFittingResource")
        assert "needs 108Gi" in refused["message"]
        assert "largest" in refused["message"]
        assert studies.pods("too-big") == []
        events = studies.kubectl(
            "get", "events", "--field-selector", "involvedObject.name=too-big"
        ).stdout
        assert "NoFittingResource" in events
        wide = studies.kubectl("get", "hpostudies", "-o", "wide").stdout
        assert "NoFittingResource" in wide and "nvidia.com/mig-2g.20gb" in wide


# --------------------------------------------------------------------------- invalid specs


def _valid_study(name: str = "bad") -> dict[str, Any]:
    return small_cpu_study(name)


def _with(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    study = _valid_study()
    mutate(study["spec"])
    return study


def _part(spec: dict[str, Any], at: str) -> dict[str, Any]:
    """The part of ``spec`` at ``at``: a section (``resources``) or a parameter
    (``searchSpace[1]``)."""
    name, _, index = at.rstrip("]").partition("[")
    part = spec[name]
    return part[int(index)] if index else part  # type: ignore[no-any-return]


def _invalid(at: str, message: str, id: str, **change: Any) -> Any:
    """A case that sets ``change`` on the spec's part at ``at``: the API server must reject it
    at ``spec.<at>.<the first field changed>`` with ``message``."""

    def mutate(spec: dict[str, Any]) -> None:
        _part(spec, at).update(copy.deepcopy(change))

    return pytest.param(mutate, f"spec.{at}.{next(iter(change))}", message, id=id)


INVALID = [
    _invalid("searchSpace[0]", "below high", "low-above-high", low="0.5", high="0.1"),
    _invalid("searchSpace[0]", "above 0 with scale Log", "log-scale-zero", low="0"),
    _invalid("searchSpace[1]", "non-empty", "categorical-without-choices", choices=[]),
    _invalid("searchSpace[0]", "not accepted", "float-with-choices", choices=[1, 2]),
    pytest.param(
        lambda s: s.update(stages=[{"groups": ["Nope"]}]),
        "spec.stages",
        "group",
        id="stage-unknown-group",
    ),
    _invalid("resources", "greater than or equal to 1", "parallelism-zero", parallelism=0),
    _invalid("budget", "greater than or equal to 1", "budget-zero", maxTrials=0),
    _invalid("objective", "Unsupported value", "bad-enum", direction="Up"),
    _invalid("task", "should match", "bad-entrypoint", entrypoint="no_colon"),
    _invalid("budget", "unknown field", "unknown-field", maxTrails=5),
    pytest.param(
        lambda s: s["searchSpace"].append(
            {"name": "weight_decay", "type": "Float", "low": "0", "high": "0.5", "default": "0.9"}
        ),
        "spec.searchSpace[4].default",
        "within [low, high]",
        id="default-outside-range",
    ),
    pytest.param(
        lambda s: s["searchSpace"].append(
            {"name": "weight_decay", "type": "Float", "low": "0", "high": "0.5", "default": "lo"}
        ),
        "spec.searchSpace[4].default",
        "must be a number for a Float",
        id="default-not-a-number",
    ),
    _invalid("resources", "between 0 and 4", "headroom-too-large", memoryHeadroom="9"),
    pytest.param(
        lambda s: s["searchSpace"].append(dict(s["searchSpace"][0])),
        "spec.searchSpace[4]",
        "Duplicate value",
        id="duplicate-parameter",
    ),
    pytest.param(
        lambda s: s["pruner"].update(type="Percentile"),
        "spec.pruner.percentile",
        "required when type is Percentile",
        id="percentile-missing",
    ),
    _invalid("searchSpace[1]", "Duplicate value", "repeated-choice", choices=[32, 64, 32]),
    _invalid("searchSpace[2]", "integer for an Int parameter", "fractional-int-step", step="0.5"),
    pytest.param(
        lambda s: _part(s, "searchSpace[1]").update(choices=["small", "large"]),
        "spec.searchSpace",
        "positive integers",
        id="batch-size-not-integer",
    ),
    pytest.param(
        lambda s: s.update(
            stages=[{"groups": ["Default"], "trials": 5}, {"groups": ["Default"], "trials": 5}]
        ),
        "spec.budget.maxTrials",
        "cover the stages",
        id="stages-exceed-budget",
    ),
    pytest.param(
        lambda s: s.setdefault("training", {}).update(profile={"trials": "EveryN"}),
        "spec.training.profile.every",
        "required when trials is EveryN",
        id="profile-every-missing",
    ),
    pytest.param(
        lambda s: s.setdefault("training", {}).update(profile={"every": 3}),
        "spec.training.profile.every",
        "only used with trials: EveryN",
        id="profile-every-without-everyn",
    ),
]


TWO_OBJECTIVES = [
    {"metric": "accuracy", "direction": "Maximize"},
    {"metric": "parameters", "direction": "Minimize"},
]


def _several(spec: dict[str, Any], **changes: Any) -> None:
    """Two objectives instead of one, and ``changes`` on top."""
    spec.pop("objective")
    spec["objectives"] = copy.deepcopy(TWO_OBJECTIVES)
    spec.update(changes)


def _points(*points: dict[str, Any]) -> dict[str, Any]:
    return {"points": [{"params": [{"name": k, "value": v} for k, v in p.items()]} for p in points]}


INVALID += [
    pytest.param(
        lambda s: s.update(objectives=copy.deepcopy(TWO_OBJECTIVES)),
        "spec.objectives",
        "mutually exclusive with spec.objective",
        id="objective-and-objectives",
    ),
    pytest.param(lambda s: s.pop("objective"), "spec.objective", "required", id="no-objective"),
    pytest.param(
        lambda s: _several(s, sampler={"type": "CMAES"}),
        "spec.sampler.type",
        "cannot optimise several objectives",
        id="several-objectives-cmaes",
    ),
    pytest.param(
        lambda s: _several(s, pruner={"type": "Median"}),
        "spec.pruner.type",
        "must be Nop or MOASHA with several objectives",
        id="several-objectives-pruner",
    ),
    pytest.param(
        lambda s: _several(s, objectives=[TWO_OBJECTIVES[0], dict(TWO_OBJECTIVES[0])]),
        "spec.objectives[1]",
        "Duplicate value",
        id="repeated-metric",
    ),
    pytest.param(
        lambda s: s.update(sampler={"type": "TPE", "populationSize": 8}),
        "spec.sampler.populationSize",
        "only used by the NSGAII and NSGAIII samplers",
        id="population-for-tpe",
    ),
    pytest.param(
        lambda s: s.update(warmStart=_points({"learning_rat": "1e-3"})),
        "spec.warmStart.points",
        "must be a searchSpace parameter",
        id="warm-start-unknown-parameter",
    ),
    pytest.param(
        lambda s: s.update(warmStart=_points(*[{"learning_rate": "1e-3"}] * 7)),
        "spec.warmStart",
        "must fit in budget.maxTrials",
        id="warm-start-beyond-budget",
    ),
    pytest.param(
        lambda s: s.update(warmStart={"fromStudy": {"hpoStudy": "a", "studyName": "b"}}),
        "spec.warmStart.fromStudy",
        "exactly one of hpoStudy and studyName",
        id="warm-start-two-sources",
    ),
    pytest.param(
        lambda s: s.update(warmStart={"fromStudy": {"hpoStudy": "a", "mode": "Reevaluate"}}),
        "spec.warmStart.fromStudy.topK",
        "required when mode is Reevaluate",
        id="reevaluate-without-top-k",
    ),
    _invalid(
        "resources", "should match '^Auto$'", "trials-per-device-word", trialsPerDevice="Sometimes"
    ),
    _invalid(
        "resources", "less than or equal to 16", "trials-per-device-too-many", trialsPerDevice=17
    ),
    _invalid(
        "resources", "greater than or equal to 1", "trials-per-device-zero", trialsPerDevice=0
    ),
    _invalid("resources", "should match", "queue-name-not-a-name", queueName="Team_A"),
]


@pytest.mark.parametrize(("mutate", "path", "message"), INVALID)
def test_invalid_spec_is_rejected_at_apply_time_with_the_field(
    studies: StudyClient, mutate: Callable[[dict[str, Any]], None], path: str, message: str
) -> None:
    study = _with(mutate)
    result = studies.apply(study, check=False)
    assert result.returncode != 0, f"the API server accepted an invalid spec ({path})"
    assert path in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert studies.study("bad") is None
    # The local validator (the runner's and `kubetune validate`'s) rejects it at the same field.
    with pytest.raises(SpecError) as local:
        study_from_mapping(study)
    assert any(e.path.startswith(path) for e in local.value.errors), local.value.render()


def test_objectives_are_immutable_and_cannot_replace_objective(studies: StudyClient) -> None:
    study = _valid_study("pareto")
    _several(study["spec"])
    studies.apply(study)
    study["spec"]["objectives"][1]["direction"] = "Maximize"
    result = studies.apply(study, check=False)
    assert result.returncode != 0
    assert "spec.objectives" in result.stderr and "immutable" in result.stderr
    single = _valid_study("pareto")
    result = studies.apply(single, check=False)
    assert result.returncode != 0
    assert "cannot switch between objective and objectives" in result.stderr
    studies.kubectl("delete", "hpostudy", "pareto")


def test_valid_spec_is_accepted_and_objective_is_immutable(studies: StudyClient) -> None:
    study = _valid_study("fine")
    studies.apply(study)
    assert studies.study("fine") is not None
    study["spec"]["objective"]["direction"] = "Minimize"
    result = studies.apply(study, check=False)
    assert result.returncode != 0
    assert "spec.objective" in result.stderr and "immutable" in result.stderr
    study["metadata"]["name"] = "x" * 49
    result = studies.apply(study, check=False)
    assert result.returncode != 0 and "at most 48 characters" in result.stderr
    studies.kubectl("delete", "hpostudy", "fine")


# --------------------------------------------------------------------------- failures and restarts


def test_a_database_restart_shows_storage_unavailable_and_the_study_recovers(
    studies: StudyClient,
    cpu_nodes: list[str],
    control_plane: ControlPlane,
    restartable_postgres: RestartablePostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL stopped for real under a running study: Ready=False StorageUnavailable, the
    runners and what the status knew are kept, and the study recovers once it is back."""
    for key, value in operator_env(control_plane, storage_url=restartable_postgres.url).items():
        monkeypatch.setenv(key, value)
    name = "outage"
    try:
        with run_operator(studies.namespace):
            studies.apply(small_cpu_study(name, max_trials=4))
            wait_until(
                lambda: len(studies.pods(name)) == 2 and studies.condition(name, "Ready"),
                60,
                "two runners and a Ready condition",
                diagnose=studies.diagnose,
            )
            runners = {p["metadata"]["uid"] for p in studies.pods(name)}
            restartable_postgres.stop()
            try:
                down = studies.wait_condition(name, "Ready", "False", 60, "StorageUnavailable")
                assert "cannot read the study's storage" in down["message"]
                assert restartable_postgres.url.split("@")[0] not in down["message"]
                status = (studies.study(name) or {})["status"]
                assert status["trials"]["budget"] == 4 and status["trialsSummary"] == "0/4"
                # Nothing is deleted or created while the storage cannot be read.
                assert {p["metadata"]["uid"] for p in studies.pods(name)} == runners
            finally:
                restartable_postgres.start()
            back_at = time.monotonic()
            ready = wait_until(
                lambda: (
                    studies.condition(name, "Ready").get("reason") != "StorageUnavailable"
                    and studies.condition(name, "Ready")
                ),
                60,
                "the study to recover",
                diagnose=studies.diagnose,
            )
            recovered = f"Ready={ready['status']} {ready['reason']}"
            recovered += f" {time.monotonic() - back_at:.1f}s after PostgreSQL was back"
            assert {p["metadata"]["uid"] for p in studies.pods(name)} == runners
            events = studies.kubectl(
                "get", "events", "--field-selector", f"involvedObject.name={name}"
            ).stdout
            assert "StorageUnavailable" in events
            # The pass's repeated warning goes to the log, not to an Event every pass.
            assert "storage unavailable:" not in events
    finally:
        delete_studies(studies)
    print(f"\n[measure] operator: {recovered}")  # kopf's runner captures stdout while it runs


def test_missing_storage_secret_is_reported_then_recovered(
    studies: StudyClient,
    cpu_nodes: list[str],
    scheduling_operator: Any,
    postgres_url: str,
) -> None:
    study = small_cpu_study("secret")
    study["spec"]["storage"] = {"secretRef": {"name": "team-postgres", "key": "dsn"}}
    with scheduling_operator():
        studies.apply(study)
        ready = studies.wait_condition("secret", "Ready", "False", 60, "StorageUnavailable")
        assert "team-postgres" in ready["message"] and "not found" in ready["message"]
        assert studies.pods("secret") == []
        studies.kubectl(
            "create", "secret", "generic", "team-postgres", f"--from-literal=dsn={postgres_url}"
        )
        pods = wait_until(
            lambda: len(studies.pods("secret")) == 2 and studies.pods("secret"),
            30,
            "runners once the Secret exists",
            diagnose=studies.diagnose,
        )
        env = {e["name"]: e for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["KUBETUNE_STORAGE_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": "team-postgres", "key": "dsn"}
        }
        assert postgres_url not in studies.kubectl("get", "pods", "-o", "yaml").stdout


def test_a_study_whose_trials_keep_failing_is_failed_with_the_reason(
    studies: StudyClient,
    cpu_nodes: list[str],
    scheduling_operator: Any,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """The failure breaker in the operator's status: a real runner on this machine (kwok's pods
    never run) fails every trial (an activation the task does not know); the operator reads
    the run of failures from the storage, fails the study and says why."""
    study = small_cpu_study("brittle")
    study["spec"]["searchSpace"] = [
        {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2"},
        {"name": "activation", "type": "Categorical", "choices": ["swish"]},
    ]
    # No maxFailedTrials: the breaker alone stops it.
    study["spec"]["budget"] = {"maxTrials": 1000, "maxConsecutiveFailedTrials": 3}
    path = tmp_path / "brittle.yaml"
    path.write_text(dump_yaml(study))
    log = tmp_path / "runner.log"
    with scheduling_operator():
        studies.apply(study)
        with log.open("ab") as out:
            runner = subprocess.run(
                [
                    *(sys.executable, "-m", "trial_runner.cli", "runner", str(path)),
                    *("--study-name", f"{studies.namespace}.brittle", "--storage", postgres_url),
                ],
                stdout=out,
                stderr=out,
                env=dict(os.environ, KUBETUNE_CPU_THREADS="1", KUBETUNE_WAIT_SECONDS="0.5"),
                timeout=300,
            )
        assert runner.returncode == 0, log.read_text()[-3000:]
        assert "the last 3 trials failed in a row" in log.read_text()
        failed = studies.wait_condition("brittle", "Failed", "True", 60, "ConsecutiveFailedTrials")
        assert failed["message"].startswith(
            "the last 3 trials failed in a row, reaching budget.maxConsecutiveFailedTrials (3)"
        ), failed
        wait_until(lambda: not studies.pods("brittle"), 30, "the runner pods deleted")
        events = studies.kubectl("get", "events", "--field-selector=reason=Failed").stdout
        assert "brittle" in events and "in a row" in events, events


# --------------------------------------------------------------------------- cost per pass


def _passes() -> float:
    """Passes the operator in this process has made (its reconcile histogram's count)."""
    return REGISTRY.get_sample_value("kubetune_reconcile_duration_seconds_count") or 0.0


def test_steady_state_passes_make_no_api_requests(
    studies: StudyClient,
    cpu_nodes: list[str],
    control_plane: ControlPlane,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Pods and nodes come from watch-fed caches, and a pass writes the status only when it
    changed: once two studies' runners are up, the operator's passes read the storage and ask
    the API server nothing. Counted by the API server itself (its audit log records the
    operator's user), so no request the operator makes can be missed."""
    kubeconfig = control_plane.audited_kubeconfig(tmp_path / "operator.kubeconfig")
    env = operator_env(control_plane, storage_url=postgres_url, KUBECONFIG=str(kubeconfig))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from hpo_operator.handlers import INTERVAL  # as the operator's timers were registered

    names = ["steady-a", "steady-b"]
    documents = [small_cpu_study(name, max_trials=50, parallelism=3) for name in names]
    # One study has finished trials (a best trial, telemetry without overhead) to report.
    study_name = optuna_study_name(studies.namespace, names[0])
    add_finished_trials(postgres_url, study_name, documents[0]["spec"], count=20)
    window = max(6.0, 2.5 * INTERVAL)
    started = dt.datetime.now(dt.UTC)
    try:
        with run_operator(studies.namespace):
            for document in documents:
                studies.apply(document)
            for name in names:
                studies.wait_condition(name, "Ready", "True", 90, "RunnersReady")
            time.sleep(INTERVAL + 1)  # the passes that wrote Ready have been answered
            since, before = dt.datetime.now(dt.UTC), _passes()
            time.sleep(window)
            until, passes = dt.datetime.now(dt.UTC), _passes() - before
            summary = (studies.study(names[0]) or {})["status"]["trialsSummary"]
            time.sleep(1)  # a request is logged once it has been answered
            events = control_plane.audit_events()
    finally:
        delete_studies(studies)
    startup = api_requests(events, started, since)
    steady = api_requests(events, since, until)
    # The caches were filled by one list each at start, which the audit log records.
    assert startup[("list", "pods")] == 1 and startup[("list", "nodes")] == 1, startup
    assert startup[("create", "pods")] == 6, startup
    assert passes >= 2 * len(names), f"only {passes} passes in {window:.0f}s"
    assert summary == "20/50"
    asked = {f"{verb} {resource}": n for (verb, resource), n in steady.items() if verb != "watch"}
    assert asked == {}, f"{passes:.0f} steady-state passes asked the API server: {asked}"
    lists = {resource: n for (verb, resource), n in startup.items() if verb == "list"}
    print(
        f"\n[measure] operator: {passes:.0f} passes over {len(names)} studies in {window:.0f}s,"
        f" 0 API requests; lists at start: {lists}"
    )
