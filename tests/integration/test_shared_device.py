"""Several runner processes in one runner pod (``kubetune runner --processes N``), as on a GPU
shared by several trials, here on CPU against PostgreSQL: the budget stays exact, an
out-of-memory error in one process leaves the others running, a process that dies is
replaced, and processes that keep running out of memory hand the pod back to the operator.

The same processes on one CUDA device are not exercised here (no GPU on the test machines).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import TELEMETRY_ATTR, WORKER_ATTR
from kubetune_api.spec import load_study
from kubetune_study.storage import ensure_study, open_storage, read_progress
from tests.harness.helpers import wait_until
from tests.harness.runners import runner_env, start_runner
from tests.harness.studies import digits_study

SHORT_OF_MEMORY = "tests.integration.oom_tasks:ShortOfMemoryMLP"


def start_pod_runner(
    study: Path, name: str, processes: int, log: Path, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    """What a runner pod runs: the storage comes from the environment, as from the Secret."""
    handle = open(log, "ab")  # noqa: SIM115 - closed by the child
    cmd = [
        *(sys.executable, "-m", "trial_runner.cli", "runner", "--study-name", name),
        *("--processes", str(processes), *args, str(study)),
    ]
    proc = subprocess.Popen(cmd, stdout=handle, stderr=handle, env=runner_env(**env))
    handle.close()
    return proc


def prepare(postgres_url: str, path: Path, name: str) -> optuna.Study:
    return ensure_study(open_storage(postgres_url), name, load_study(path).spec)


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def wait_exit(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"runner did not exit:\n{log.read_text()[-4000:]}") from None


def test_one_pod_of_three_processes_finishes_exactly_the_budget(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    path = write_study(digits_study("three", budget={"maxTrials": 9}))
    study = prepare(postgres_url, path, "three")
    log = tmp_path / "pod.log"
    pod = start_pod_runner(path, "three", 3, log, KUBETUNE_STORAGE_URL=postgres_url)
    assert wait_exit(pod, log) == 0, log.read_text()[-4000:]

    trials = study.get_trials()
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs[WORKER_ATTR] for t in trials}
    # Three processes of one pod (one host name), each claiming trials like any runner.
    assert len(workers) == 3, workers
    assert len({w.rsplit(":", 1)[0] for w in workers}) == 1
    assert sorted(t.number for t in trials) == list(range(9))
    assert all("failed_trial" not in t.system_attrs for t in trials)


def test_an_out_of_memory_error_in_one_process_does_not_stop_the_others(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    marker = tmp_path / "short-of-memory"
    doc = digits_study(
        "oom",
        budget={"maxTrials": 9},
        training={"epochs": 2},
        task={"entrypoint": SHORT_OF_MEMORY, "config": {"marker": str(marker), "fits": 8}},
    )
    path = write_study(doc)
    study = prepare(postgres_url, path, "oom")
    log = tmp_path / "pod.log"
    pod = start_pod_runner(
        path, "oom", 3, log, "--exit-after-oom-trials", "100", KUBETUNE_STORAGE_URL=postgres_url
    )
    assert wait_exit(pod, log) == 0, log.read_text()[-4000:]
    assert marker.exists()

    trials = study.get_trials()
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials), [
        t.state for t in trials
    ]
    telemetry = {t.number: t.user_attrs[TELEMETRY_ATTR] for t in trials}
    short = {t.user_attrs[WORKER_ATTR] for t in trials if telemetry[t.number]["oom_retries"]}
    # One process ran out of memory and retried at half the micro-batch (32 or 64 -> 8) ...
    assert len(short) == 1, short
    mine = sorted(t.number for t in trials if t.user_attrs[WORKER_ATTR] in short)
    assert telemetry[mine[0]]["oom_retries"] >= 2
    for number in mine:
        # (a later trial of a batch size it already halved starts at what ran: no retry)
        assert telemetry[number]["micro_batch"] <= 8
        assert telemetry[number]["stop_reason"] == "Completed"
    # ... while the others went on at full micro-batches.
    others = [t for t in trials if t.user_attrs[WORKER_ATTR] not in short]
    assert len({t.user_attrs[WORKER_ATTR] for t in others}) == 2
    assert all(telemetry[t.number]["oom_retries"] == 0 for t in others)
    assert all(telemetry[t.number]["micro_batch"] == t.params["batch_size"] for t in others)


def test_processes_that_keep_running_out_of_memory_end_the_pod_with_code_4(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    marker = tmp_path / "short-of-memory"
    doc = digits_study(
        "oom-exit",
        budget={"maxTrials": 8},
        training={"epochs": 20},
        task={"entrypoint": SHORT_OF_MEMORY, "config": {"marker": str(marker), "fits": 0}},
    )
    path = write_study(doc)
    study = prepare(postgres_url, path, "oom-exit")
    log = tmp_path / "pod.log"
    pod = start_pod_runner(
        path, "oom-exit", 2, log, "--exit-after-oom-trials", "2", KUBETUNE_STORAGE_URL=postgres_url
    )
    # Not even one sample fits in the short process: its trials are pruned as OutOfMemory,
    # and after two of them the pod gives up with the code the operator reads.
    assert wait_exit(pod, log) == 4, log.read_text()[-4000:]
    text = log.read_text()
    assert "ran out of memory while other runner processes shared its device" in text, text

    spec = load_study(path).spec
    trials = study.get_trials()
    out_of_memory = [
        t
        for t in trials
        if t.user_attrs.get(TELEMETRY_ATTR, {}).get("stop_reason") == "OutOfMemory"
    ]
    assert len(out_of_memory) == 2 and all(t.state == TrialState.PRUNED for t in out_of_memory)
    # The other process was stopped too: its trial, if it had one, was released, not failed.
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert read_progress(study, spec).failed == 0

    # The operator's replacement runs fewer processes per device (here one) and finishes.
    again = tmp_path / "replacement.log"
    replacement = start_runner(path, postgres_url, "oom-exit", again)
    assert wait_exit(replacement, again) == 0, again.read_text()[-4000:]
    progress = read_progress(study, spec)
    assert (progress.finished, progress.failed, progress.active) == (8, 0, 0)


def test_a_killed_process_is_replaced_and_its_trial_retried(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    doc = digits_study(
        "killed",
        budget={"maxTrials": 4},
        training={
            "epochSchedule": [{"fromTrial": 0, "epochs": 400}, {"fromTrial": 1, "epochs": 1}]
        },
    )
    path = write_study(doc)
    study = prepare(postgres_url, path, "killed")
    log = tmp_path / "pod.log"
    pod = start_pod_runner(path, "killed", 2, log, KUBETUNE_STORAGE_URL=postgres_url)

    names = {parameter["name"] for parameter in doc["spec"]["searchSpace"]}

    def long_trial() -> FrozenTrial | None:
        running = study.get_trials(states=(TrialState.RUNNING,))
        # Every parameter chosen (so training), which the retry repeats.
        return next((t for t in running if t.number == 0 and set(t.params) == names), None)

    victim = wait_until(long_trial, 180, "trial 0 to train", diagnose=log.read_text)
    host, pid = victim.user_attrs[WORKER_ATTR].rsplit(":", 1)
    assert host == socket.gethostname()
    # One of the pod's processes dies (as the kernel's OOM killer would end it).
    os.kill(int(pid), signal.SIGKILL)
    assert wait_exit(pod, log) == 0, log.read_text()[-4000:]

    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[0].params
    assert len(finished(list(trials.values()))) == 4
    assert read_progress(study, load_study(path).spec).failed == 0
    # The dead process was replaced by a new one.
    workers = {t.user_attrs[WORKER_ATTR] for t in trials.values()}
    assert f"{host}:{pid}" in workers and len(workers) >= 2
    assert "re-queued trials [0]" in log.read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kubetune_runner_trials_total{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            values[state] = float(line.rsplit(" ", 1)[1])
    return values


def test_the_pod_serves_the_sum_of_its_processes_metrics_and_stops_on_sigterm(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    doc = digits_study("served", budget={"maxTrials": 40}, training={"epochs": 4})
    path = write_study(doc)
    study = prepare(postgres_url, path, "served")
    log = tmp_path / "pod.log"
    port = _free_port()
    pod = start_pod_runner(
        path,
        "served",
        2,
        log,
        KUBETUNE_STORAGE_URL=postgres_url,
        KUBETUNE_METRICS_PORT=str(port),
        TMPDIR=str(tmp_path),
    )

    def both_finished_trials() -> Counter[str] | None:
        done = Counter(t.user_attrs[WORKER_ATTR] for t in finished(study.get_trials()))
        return done if len(done) == 2 else None

    done = wait_until(
        both_finished_trials, 300, "both processes to finish trials", diagnose=log.read_text
    )
    served = wait_until(
        lambda: (v := _scrape(port)) and v.get("complete", 0) >= sum(done.values()) and v,
        30,
        "the pod's endpoint to count every process's trials",
    )
    # More than either process finished alone: the endpoint sums the pod's processes.
    assert served["complete"] > max(done.values())

    pod.send_signal(signal.SIGTERM)
    assert wait_exit(pod, log, timeout=60) == 0, log.read_text()[-4000:]
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], "trials released"
    assert read_progress(study, load_study(path).spec).failed == 0
    assert len(finished(trials)) < 40, "stopped before the budget was spent"
    # The processes' metric files went with the pod's supervisor.
    assert not list(tmp_path.glob("kubetune-metrics-*"))
