"""Preempted runners on a real PostgreSQL: a killed runner (SIGKILL: a node lost, a spot
instance reclaimed) and a stopped one (SIGTERM: a pod deleted, a node drained) lose at most
the fold in progress; their trial is re-queued, counted as preempted, and resumed at its next
fold by another runner.

Work lost per preemption is measured here (printed with ``pytest -s``; the README quotes it):
the study reports every epoch (``reportEvery: Epoch``, validation every epoch), so the
preempted trial's intermediate values count the epochs its run finished; those of its
unfinished fold, plus the epoch in progress, are what the retry trains again.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kubetune_api.contract import FOLDS_ATTR, PREEMPTED_ATTR, TELEMETRY_ATTR
from kubetune_api.spec import load_study
from kubetune_study.preemption import retried_from
from kubetune_study.progress import is_preempted, retried_numbers
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.helpers import wait_until
from tests.harness.runners import kubetune, start_runner
from tests.harness.studies import digits_study

FOLDS, EPOCHS = 3, 60
#: Heartbeats every second and stale after 4: a killed runner's trial is noticed in seconds.
HEARTBEAT = {"KUBETUNE_HEARTBEAT_INTERVAL": "1", "KUBETUNE_HEARTBEAT_GRACE_PERIOD": "4"}


def _study_doc(name: str) -> dict[str, Any]:
    """Three trials; the first long (3 folds of 60 epochs, a second or more per fold), the
    others short. A retry of the first trains as the first did: 60 epochs a fold."""
    return digits_study(
        name,
        budget={"maxTrials": 3},
        pruner={"type": "Nop"},
        training={
            "folds": FOLDS,
            "reportEvery": "Epoch",
            "epochSchedule": [
                {"fromTrial": 0, "epochs": EPOCHS},
                {"fromTrial": 1, "epochs": 1},
            ],
        },
    )


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, f"runner exited {code}:\n{log.read_text()[-3000:]}"


def _midway_through_the_second_fold(study: optuna.Study) -> Callable[[], FrozenTrial | None]:
    """Trial 0 once it has finished its first fold and half of its second."""

    def probe() -> FrozenTrial | None:
        trials = study.get_trials(states=(TrialState.RUNNING,))
        first = next((t for t in trials if t.number == 0), None)
        if first is None or len(first.user_attrs.get(FOLDS_ATTR, [])) < 1:
            return None
        return first if len(first.intermediate_values) >= EPOCHS + EPOCHS // 2 else None

    return probe


def _work_lost(preempted: FrozenTrial, retry: FrozenTrial) -> tuple[int, int]:
    """Epochs the preempted run finished but the retry did not carry over, and the retry's
    carried epochs."""
    carried = int(retry.user_attrs[TELEMETRY_ATTR]["epochs_resumed"])
    return len(preempted.intermediate_values) - carried, carried


def _check_resumed(study: optuna.Study, killed: int, how: str) -> FrozenTrial:
    trials = {t.number: t for t in study.get_trials()}
    preempted = trials[killed]
    assert preempted.state == TrialState.FAIL
    assert is_preempted(preempted, retried_numbers(list(trials.values())))
    retries = [t for t in trials.values() if retried_from(t) == killed]
    assert len(retries) == 1, retries
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == preempted.params
    telemetry = retry.user_attrs[TELEMETRY_ATTR]
    # The folds the preempted run finished were not trained again.
    finished_folds = len(preempted.user_attrs[FOLDS_ATTR])
    assert finished_folds >= 1
    assert telemetry["folds_resumed"] == finished_folds
    assert telemetry["folds_run"] == FOLDS and telemetry["epochs_run"] == FOLDS * EPOCHS
    # The pruner saw the same history: every value the preempted run reported for its
    # finished folds is in the retry, at the same step.
    carried_steps = range(finished_folds * EPOCHS)
    assert {s: retry.intermediate_values[s] for s in carried_steps} == {
        s: preempted.intermediate_values[s] for s in carried_steps
    }
    lost, carried = _work_lost(preempted, retry)
    # At most the fold in progress: fewer finished epochs than a fold, plus the epoch that ran.
    assert 0 <= lost < EPOCHS, (lost, carried)
    print(
        f"\n[measure] {how}: preempted run finished {len(preempted.intermediate_values)} "
        f"epochs; {carried} carried over; lost {lost} finished epochs + the one in progress "
        f"= at most {(lost + 1) / EPOCHS:.2f} of a fold ({EPOCHS} epochs a fold)"
    )
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    return retry


def test_a_killed_runner_s_trial_resumes_at_its_next_fold_in_another_runner(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    path = write_study(_study_doc("killed"))
    study = ensure_study(open_storage(postgres_url), "killed", load_study(path).spec)
    victim = start_runner(path, postgres_url, "killed", tmp_path / "victim.log", **HEARTBEAT)
    wait_until(_midway_through_the_second_fold(study), 300, "trial 0 half-way through fold 2")
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    log = tmp_path / "survivor.log"
    _finish(start_runner(path, postgres_url, "killed", log, **HEARTBEAT), log)
    _check_resumed(study, 0, "SIGKILL")
    assert "resumes trial 0 at fold 2 of 3" in log.read_text()

    # kubetune results counts it as preempted, not failed.
    results = kubetune("results", str(path), "--storage", postgres_url, "--output",
                       str(tmp_path / "out.yaml"))  # fmt: skip
    assert results.returncode == 0, results.stderr
    counts = (tmp_path / "out.yaml").read_text()
    assert "failed: 0" in counts and "preempted: 1" in counts


def test_sigterm_hands_the_trial_back_and_another_runner_resumes_it(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    """A pod being deleted (suspend, scale-down, a drained node) releases its trial at once."""
    path = write_study(_study_doc("drained"))
    study = ensure_study(open_storage(postgres_url), "drained", load_study(path).spec)
    log = tmp_path / "drained.log"
    runner = start_runner(path, postgres_url, "drained", log)
    wait_until(_midway_through_the_second_fold(study), 300, "trial 0 half-way through fold 2")
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs[PREEMPTED_ATTR] == "Terminated"
    queued = [t for t in trials.values() if retried_from(t) == 0]
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING
    assert queued[0].user_attrs[FOLDS_ATTR] == trials[0].user_attrs[FOLDS_ATTR]

    log2 = tmp_path / "resumed.log"
    _finish(start_runner(path, postgres_url, "drained", log2), log2)
    retry = _check_resumed(study, 0, "SIGTERM")
    assert retry.number == queued[0].number
