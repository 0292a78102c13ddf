"""End-to-end: the operator against a real API server, scheduler and simulated GPU/MIG nodes.

Runner pods of CPU studies are executed for real (``kubetune runner`` against the tests'
PostgreSQL) by the session's pod executor; pods of GPU studies are only scheduled (kwok plays
their kubelet), which is what MIG-aware sizing needs to prove.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.controlplane import ControlPlane
from tests.e2e.operator_fixtures import (
    CRD_FILE,
    EXAMPLES,
    StudyClient,
    finished_trials,
    load_example,
    operator_env,
    run_operator,
    small_cpu_study,
    wait_until,
)
from tests.e2e.pod_executor import PodExecutor
from tests.e2e.simulated_cluster import NodeGroup
from trial_runner.spec import SpecError, parse_quantity, study_from_mapping

pytestmark = pytest.mark.e2e

STUDY_TIMEOUT = 300.0
# The example as written (24 trials, 3 folds) takes about 90 s on 2 idle cores; the bound is
# for a loaded machine.
EXAMPLE_TIMEOUT = 900.0


@pytest.fixture(scope="session")
def hpostudy_crd(control_plane: ControlPlane) -> None:
    """The generated CRD, applied as a user would (server-side), and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/hpostudies.kubetune.dev", "--timeout=60s"
    )


@pytest.fixture
def studies(control_plane: ControlPlane, namespace: str, hpostudy_crd: None) -> StudyClient:
    # The runner pods must pass the strictest Pod Security Standard.
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return StudyClient(control_plane, namespace)


@pytest.fixture
def cpu_nodes(simulated_cluster: Callable[..., list[str]]) -> list[str]:
    return simulated_cluster([NodeGroup(count=2, cpu="8", memory="32Gi")])


@pytest.fixture
def executing_operator(
    control_plane: ControlPlane,
    namespace: str,
    studies: StudyClient,
    pod_executor: PodExecutor,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[], Any]]:
    """``start()`` runs the operator (a context manager); runner pods execute for real."""
    for key, value in operator_env(control_plane, execute=True, storage_url=postgres_url).items():
        monkeypatch.setenv(key, value)
    yield lambda: run_operator(namespace)
    _delete_studies(studies)


def _delete_studies(studies: StudyClient) -> None:
    # Whatever a test left behind must not hold the namespace with a finalizer no one handles.
    studies.kubectl("delete", "hpostudies", "--all", "--wait=false", check=False)
    for item in yaml.safe_load(studies.kubectl("get", "hpostudies", "-o", "yaml").stdout)["items"]:
        studies.kubectl(
            "patch",
            "hpostudy",
            item["metadata"]["name"],
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


def _runner_names(studies: StudyClient, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in studies.pods(name)}


def _trials_done(studies: StudyClient, name: str) -> int:
    status = (studies.study(name) or {}).get("status") or {}
    trials = status.get("trials") or {}
    return int(trials.get("complete", 0)) + int(trials.get("pruned", 0))


def _stored_finished(postgres_url: str, optuna_name: str) -> int:
    """Finished trials as the storage has them (not as the operator reports them)."""
    counts = finished_trials(postgres_url, optuna_name)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def _assert_exact_budget(postgres_url: str, namespace: str, name: str, budget: int) -> None:
    counts = finished_trials(postgres_url, f"{namespace}.{name}")
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == budget, counts
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0, counts


# --------------------------------------------------------------------------- the CPU example


def test_cpu_example_runs_to_success(
    studies: StudyClient, cpu_nodes: list[str], executing_operator: Any, postgres_url: str
) -> None:
    example = load_example("digits-cpu.yaml")
    name = example["metadata"]["name"]
    budget = example["spec"]["budget"]["maxTrials"]
    with executing_operator():
        studies.kubectl("apply", "-f", str(EXAMPLES / "digits-cpu.yaml"))
        pods = wait_until(
            lambda: len(studies.pods(name)) == 2 and studies.pods(name),
            60,
            "two runner pods",
            diagnose=studies.diagnose,
        )
        assert {p["metadata"]["name"] for p in pods} == {f"{name}-runner-0", f"{name}-runner-1"}
        assert {p["spec"]["nodeName"] for p in pods} <= set(cpu_nodes)
        memory = example["spec"]["resources"]["memory"]
        assert all(
            p["spec"]["containers"][0]["resources"]["limits"]["memory"] == memory for p in pods
        )
        wait_until(
            lambda: _trials_done(studies, name) > 0,
            STUDY_TIMEOUT,
            "a finished trial",
            diagnose=studies.diagnose,
        )
        table = studies.kubectl("get", "hpostudies").stdout
        assert "TRIALS" in table and "BEST" in table and name in table
        assert f"/{budget}" in table
        studies.wait_condition(name, "Succeeded", "True", EXAMPLE_TIMEOUT, reason="BudgetSpent")
        wait_until(
            lambda: not studies.pods(name), 60, "runner pods gone", diagnose=studies.diagnose
        )

    study = studies.study(name)
    assert study is not None
    status = study["status"]
    assert status["trialsSummary"] == f"{budget}/{budget}"
    assert status["observedGeneration"] == study["metadata"]["generation"]
    assert float(status["best"]["value"]) > 0.5
    assert set(status["best"]["params"]) == {p["name"] for p in example["spec"]["searchSpace"]}
    assert status["completionTime"] and status["startTime"]
    best = studies.configmap(f"{name}-best")
    assert best is not None and best["trial"] == str(status["best"]["trial"])
    assert float(best["value"]) == pytest.approx(float(status["best"]["value"]), rel=1e-4)
    _assert_exact_budget(postgres_url, studies.namespace, name, budget)
    final = studies.kubectl("get", "hpostudies", name).stdout
    assert "Succeeded" in final and f"{budget}/{budget}" in final


# --------------------------------------------------------------------------- MIG sizing


@pytest.fixture
def scheduling_operator(
    control_plane: ControlPlane,
    namespace: str,
    studies: StudyClient,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[], Any]]:
    """The operator without the execute label: kwok plays the runner pods' kubelet."""
    for key, value in operator_env(control_plane, execute=False, storage_url=postgres_url).items():
        monkeypatch.setenv(key, value)
    yield lambda: run_operator(namespace)
    _delete_studies(studies)


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
            assert limits == {"nvidia.com/mig-2g.20gb": "1", "memory": "8Gi"}
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


def _param(spec: dict[str, Any], index: int) -> dict[str, Any]:
    return spec["searchSpace"][index]  # type: ignore[no-any-return]


INVALID = [
    pytest.param(
        lambda s: _param(s, 0).update(low="0.5", high="0.1"),
        "spec.searchSpace[0].low",
        "below high",
        id="low-above-high",
    ),
    pytest.param(
        lambda s: _param(s, 0).update(low="0"),
        "spec.searchSpace[0].low",
        "above 0 with scale Log",
        id="log-scale-zero",
    ),
    pytest.param(
        lambda s: _param(s, 1).update(choices=[]),
        "spec.searchSpace[1].choices",
        "non-empty",
        id="categorical-without-choices",
    ),
    pytest.param(
        lambda s: _param(s, 0).update(choices=[1, 2]),
        "spec.searchSpace[0].choices",
        "not accepted",
        id="float-with-choices",
    ),
    pytest.param(
        lambda s: s.update(stages=[{"groups": ["Nope"]}]),
        "spec.stages",
        "group",
        id="stage-unknown-group",
    ),
    pytest.param(
        lambda s: s["resources"].update(parallelism=0),
        "spec.resources.parallelism",
        "greater than or equal to 1",
        id="parallelism-zero",
    ),
    pytest.param(
        lambda s: s["budget"].update(maxTrials=0),
        "spec.budget.maxTrials",
        "greater than or equal to 1",
        id="budget-zero",
    ),
    pytest.param(
        lambda s: s["objective"].update(direction="Up"),
        "spec.objective.direction",
        "Unsupported value",
        id="bad-enum",
    ),
    pytest.param(
        lambda s: s["task"].update(entrypoint="no_colon"),
        "spec.task.entrypoint",
        "should match",
        id="bad-entrypoint",
    ),
    pytest.param(
        lambda s: s["budget"].update(maxTrails=5),
        "spec.budget.maxTrails",
        "unknown field",
        id="unknown-field",
    ),
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
    pytest.param(
        lambda s: s["resources"].update(memoryHeadroom="9"),
        "spec.resources.memoryHeadroom",
        "between 0 and 4",
        id="headroom-too-large",
    ),
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
    pytest.param(
        lambda s: _param(s, 1).update(choices=[32, 64, 32]),
        "spec.searchSpace[1].choices",
        "Duplicate value",
        id="repeated-choice",
    ),
    pytest.param(
        lambda s: _param(s, 2).update(step="0.5"),
        "spec.searchSpace[2].step",
        "integer for an Int parameter",
        id="fractional-int-step",
    ),
    pytest.param(
        lambda s: _param(s, 1).update(choices=["small", "large"]),
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


def test_deleted_runner_pod_is_replaced_parallelism_edit_applies_and_budget_is_exact(
    studies: StudyClient, cpu_nodes: list[str], executing_operator: Any, postgres_url: str
) -> None:
    name, budget = "replace", 6
    with executing_operator():
        studies.apply(small_cpu_study(name, max_trials=budget, epochs=60))
        wait_until(
            lambda: (
                _trials_done(studies, name) >= 1
                and len([p for p in studies.pods(name) if p["status"].get("phase") == "Running"])
                == 2
            ),
            STUDY_TIMEOUT,
            "a finished trial with two runners running",
            diagnose=studies.diagnose,
        )
        before = _runner_names(studies, name)
        studies.kubectl("delete", "pod", f"{name}-runner-0", "--wait=false")
        wait_until(
            lambda: (
                _runner_names(studies, name).get(f"{name}-runner-0")
                not in (None, before[f"{name}-runner-0"])
            ),
            90,
            "a new runner-0",
            diagnose=studies.diagnose,
        )
        # Lowering parallelism takes effect live: runner-1 goes, the study goes on.
        studies.kubectl(
            "patch",
            "hpostudy",
            name,
            "--type=merge",
            "-p",
            '{"spec":{"resources":{"parallelism":1}}}',
        )
        wait_until(
            lambda: set(_runner_names(studies, name)) <= {f"{name}-runner-0"},
            60,
            "runner-1 removed",
            diagnose=studies.diagnose,
        )
        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
    _assert_exact_budget(postgres_url, studies.namespace, name, budget)


def test_operator_restart_mid_study_creates_no_duplicates(
    studies: StudyClient, cpu_nodes: list[str], executing_operator: Any, postgres_url: str
) -> None:
    name, budget = "restart", 6
    with executing_operator():
        studies.apply(small_cpu_study(name, max_trials=budget, epochs=60))
        wait_until(
            lambda: len(studies.pods(name)) == 2, 60, "two runners", diagnose=studies.diagnose
        )
    before = _runner_names(studies, name)
    # The operator is down; the runners keep working: trials finish without it.
    optuna_name = f"{studies.namespace}.{name}"
    down_at = _stored_finished(postgres_url, optuna_name)
    wait_until(
        lambda: _stored_finished(postgres_url, optuna_name) > down_at,
        STUDY_TIMEOUT,
        "a trial to finish while the operator is down",
        diagnose=studies.diagnose,
    )
    with executing_operator():
        # Several passes of the restarted operator: it reports a trial finished after it came back.
        target = min(_stored_finished(postgres_url, optuna_name) + 1, budget)
        wait_until(
            lambda: _trials_done(studies, name) >= target,
            STUDY_TIMEOUT,
            "the restarted operator to report new trials",
            diagnose=studies.diagnose,
        )
        after = _runner_names(studies, name)
        assert set(after) <= {f"{name}-runner-0", f"{name}-runner-1"}
        surviving = {n: uid for n, uid in after.items() if n in before}
        assert surviving == {n: before[n] for n in surviving}, "running runners were replaced"
        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
    _assert_exact_budget(postgres_url, studies.namespace, name, budget)


def test_suspend_resume_and_live_budget_edit(
    studies: StudyClient, cpu_nodes: list[str], executing_operator: Any, postgres_url: str
) -> None:
    name = "suspend"
    study = small_cpu_study(name, max_trials=4, epochs=60)
    # No stated memory: the operator runs the estimate pod and sizes CPU memory from it.
    del study["spec"]["resources"]["memory"]
    with executing_operator():
        studies.apply(study)
        wait_until(
            lambda: _trials_done(studies, name) >= 1,
            STUDY_TIMEOUT,
            "a finished trial",
            diagnose=studies.diagnose,
        )
        sizing = studies.study(name)["status"]["sizing"]  # type: ignore[index]
        assert sizing["method"] in ("FakeTensor", "Analytic", "Probe"), sizing
        assert sizing["resource"] == "memory" and sizing["peakBytes"] > 0
        memory = {
            p["spec"]["containers"][0]["resources"]["limits"]["memory"] for p in studies.pods(name)
        }
        assert memory == {sizing["quantity"]}
        # Room for the runner process itself (torch alone is ~640 MiB), not just the tensors.
        assert parse_quantity(sizing["quantity"]) >= 2**30 + sizing["peakBytes"]
        assert studies.pods(name, "memory-estimate") == []

        studies.kubectl(
            "patch", "hpostudy", name, "--type=merge", "-p", '{"spec":{"suspend":true}}'
        )
        studies.wait_condition(name, "Suspended", "True", 30)
        wait_until(lambda: not studies.pods(name), 60, "runners drained", diagnose=studies.diagnose)
        # Nothing runs while suspended: the storage (the truth) does not move.
        frozen = finished_trials(postgres_url, f"{studies.namespace}.{name}")
        assert frozen.get("RUNNING", 0) == 0, frozen
        time.sleep(3)  # "nothing happens" has no condition to wait for
        assert finished_trials(postgres_url, f"{studies.namespace}.{name}") == frozen
        assert studies.condition(name, "Succeeded").get("status") != "True"

        # Resume with a larger budget: the same study continues to the new budget.
        studies.kubectl(
            "patch",
            "hpostudy",
            name,
            "--type=merge",
            "-p",
            '{"spec":{"suspend":false,"budget":{"maxTrials":6}}}',
        )
        studies.wait_condition(name, "Suspended", "False", 30, reason="Resumed")
        wait_until(lambda: studies.pods(name), 60, "runners back", diagnose=studies.diagnose)
        studies.wait_condition(name, "Succeeded", "True", STUDY_TIMEOUT)
        assert studies.study(name)["status"]["trialsSummary"] == "6/6"  # type: ignore[index]
    _assert_exact_budget(postgres_url, studies.namespace, name, 6)


def test_deletion_removes_runners_and_keeps_or_deletes_the_optuna_study(
    studies: StudyClient, cpu_nodes: list[str], executing_operator: Any, postgres_url: str
) -> None:
    kept = small_cpu_study("kept", max_trials=50)
    dropped = small_cpu_study("dropped", max_trials=50, parallelism=1)
    dropped["spec"]["storage"] = {"deletionPolicy": "Delete"}
    with executing_operator():
        studies.apply(kept)
        studies.apply(dropped)
        wait_until(
            lambda: studies.pods("kept") and studies.pods("dropped"),
            60,
            "runners",
            diagnose=studies.diagnose,
        )
        study = studies.study("kept")
        assert study is not None and "kubetune.dev/finalizer" in study["metadata"]["finalizers"]
        studies.kubectl("delete", "hpostudy", "kept", "dropped", "--timeout=90s")
        assert studies.pods("kept") == [] and studies.pods("dropped") == []
        assert studies.study("kept") is None
    # Retain (the default): the Optuna study and its trials are still in the storage.
    assert finished_trials(postgres_url, f"{studies.namespace}.kept") is not None
    with pytest.raises(KeyError):
        finished_trials(postgres_url, f"{studies.namespace}.dropped")


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
