"""The example of a team's own task (examples/own-task) on this machine: its package on the
Python path, its data set in a directory, its token in the environment, two loader workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from kubetune_api.spec import dump_yaml
from tests.harness.runners import runner_env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own-task"


def _kubetune(tmp_path: Path, study: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "trial_runner.cli", "run", str(study), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=runner_env(PYTHONPATH=path, **env),
        timeout=600,
    )


def test_the_own_task_example_runs_locally_with_its_data_token_and_workers(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from spectra import SpectraFiles
    finally:
        sys.path.remove(str(EXAMPLE))
    data = tmp_path / "data"
    data.mkdir()
    SpectraFiles(data).write(samples=96, channels=16, length=64, classes=4, token="t0ken")
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study["spec"]["task"]["config"]["dataDir"] = str(data)
    study["spec"]["budget"]["maxTrials"] = 2
    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(study))

    run = _kubetune(tmp_path, path, DATASET_TOKEN="t0ken")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "done (BudgetSpent): trials 2/2" in run.stdout
    assert "applies to runner pods on a cluster only" in run.stdout

    study["metadata"]["name"] = "wrong-token"
    path.write_text(dump_yaml(study))
    refused = _kubetune(tmp_path, path, DATASET_TOKEN="not-it")
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "DATASET_TOKEN is not the token this data set was published with" in output
