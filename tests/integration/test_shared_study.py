"""Several runner processes share one PostgreSQL study, as runner pods do in a cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from kubetune_api.contract import STAGE_ATTR, TELEMETRY_ATTR, WORKER_ATTR
from kubetune_api.spec import load_study
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.runners import runner_env, start_runner, start_runners_together
from tests.harness.studies import digits_study


def finish(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float = 600) -> None:
    for proc, log in zip(procs, logs, strict=True):
        code = proc.wait(timeout=timeout)
        assert code == 0, f"runner exited {code}:\n{log.read_text()[-3000:]}"


def test_two_runners_finish_exactly_the_budget_without_duplicates(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    path = write_study(digits_study("shared", budget={"maxTrials": 8}))
    spec = load_study(path).spec
    logs = [tmp_path / f"runner-{i}.log" for i in range(2)]
    procs, study = start_runners_together(
        path,
        postgres_url,
        "shared",
        logs,
        lambda: ensure_study(open_storage(postgres_url), "shared", spec),
    )
    finish(procs, logs)

    trials = study.get_trials()
    assert len(trials) == 8, [t.state for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs[WORKER_ATTR] for t in trials}
    assert len(workers) == 2, "both runners took trials"
    # Every trial ran in exactly one process, and no trial is a re-run of another.
    assert all("failed_trial" not in t.system_attrs for t in trials)
    assert sorted(t.number for t in trials) == list(range(8))
    telemetry = [t.user_attrs[TELEMETRY_ATTR] for t in trials]
    assert all(x["trial_in_process"] >= 1 for x in telemetry)
    assert max(x["trial_in_process"] for x in telemetry) >= 2, "warm reuse"
    assert all(x["metrics"]["accuracy"] == t.value for x, t in zip(telemetry, trials, strict=True))


def test_stages_advance_across_processes_with_the_best_earlier_values(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    doc = digits_study(
        "staged",
        budget={"maxTrials": 7},
        stages=[{"groups": ["Critical"], "trials": 4}, {"groups": ["Model"]}],
    )
    path = write_study(doc)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "trial_runner.cli",
            "run",
            str(path),
            "--workers",
            "2",
            "--storage",
            postgres_url,
            "--log-dir",
            str(tmp_path / "logs"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=runner_env(),
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    study = optuna.load_study(study_name="staged", storage=open_storage(postgres_url))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert len(trials) == 7 and all(t.state == TrialState.COMPLETE for t in trials)
    first = [t for t in trials if t.user_attrs[STAGE_ATTR] == 0]
    second = [t for t in trials if t.user_attrs[STAGE_ATTR] == 1]
    assert len(first) == 4 and len(second) == 3
    assert all(t.params["hidden_size"] == 32 for t in first), "default until searched"
    best_first = max(first, key=lambda t: t.value or 0)
    for t in second:
        assert t.params["learning_rate"] == best_first.params["learning_rate"]
        assert t.params["batch_size"] == best_first.params["batch_size"]
    assert len({t.params["hidden_size"] for t in second}) > 1, "stage 2 searches Model"
    # Stage 2 started only after every stage-1 trial had finished.
    assert min(t.datetime_start for t in second) >= max(t.datetime_complete for t in first)

    out = tmp_path / "best.yaml"
    results = subprocess.run(
        [
            sys.executable,
            "-m",
            "trial_runner.cli",
            "results",
            str(path),
            "--storage",
            postgres_url,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert results.returncode == 0, results.stderr
    best = yaml.safe_load(out.read_text())
    assert [s["stage"] for s in best["stages"]] == [1, 2]
    assert best["stages"][0]["bestValue"] == best_first.value
    assert best["trials"]["complete"] == 7


def test_best_checkpoint_is_kept_by_several_runners(
    postgres_url: str, write_study: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    import torch

    ckpt = tmp_path / "best-model"
    doc = digits_study("ckpt", budget={"maxTrials": 6})
    doc["spec"]["training"]["checkpoint"] = {"directory": str(ckpt)}
    path = write_study(doc)
    study = ensure_study(open_storage(postgres_url), "ckpt", load_study(path).spec)
    logs = [tmp_path / f"ckpt-{i}.log" for i in range(2)]
    finish([start_runner(path, postgres_url, "ckpt", log) for log in logs], logs)
    best = study.best_trial
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == [
        "best.json",
        "best.pt",
    ]
    saved = torch.load(ckpt / "best.pt", weights_only=False)
    assert saved["trial"] == best.number and saved["value"] == best.value
    assert saved["params"] == best.params
    assert not list(ckpt.glob(".best-*")), "no temporary files left behind"
