"""optuna-dashboard as the chart runs it, on a study's PostgreSQL storage, in headless Chromium.

The chart is rendered with the built ``helm``; its dashboard container's image tag must be the
optuna-dashboard pinned for the tests, and its command and arguments are run here as they are
(the port aside), so what the browser shows is what the chart deploys.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from kubetune_api.spec import study_from_mapping
from kubetune_study.storage import ensure_study, open_storage
from tests.harness.browser import Browser, page_text, publish_screenshot
from tests.harness.helpers import IN_CI, REPO_ROOT, free_port, wait_until
from tests.harness.studies import digits_study
from trial_runner.runner import run_runner

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "kubetune"


def _dashboard_container(helm: Path, work_dir: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(work_dir / "helm-cache"),
        "HELM_CONFIG_HOME": str(work_dir / "helm-config"),
        "HELM_DATA_HOME": str(work_dir / "helm-data"),
    }
    rendered = subprocess.run(
        [str(helm), "template", "t", str(CHART), "--set", "dashboard.enabled=true"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    for doc in yaml.safe_load_all(rendered):
        if (
            doc
            and doc["kind"] == "Deployment"
            and doc["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"
        ):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return dict(container)
    raise AssertionError("the chart rendered no dashboard Deployment")


def _command(container: dict[str, Any], storage_url: str, port: int) -> list[str]:
    """The container's command line as the kubelet would run it: ``$(VAR)`` from the env (the
    storage Secret is this test's database); only the port is this machine's free one."""
    secrets = {e["name"]: storage_url for e in container["env"] if "valueFrom" in e}
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    variables = {**values, **secrets}
    command = []
    for arg in [*container["command"], *container["args"]]:
        arg = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], arg)
        command.append(re.sub(r"^--port=\d+$", f"--port={port}", arg))
    assert f"--port={port}" in command, command
    return command


@pytest.fixture
def dashboard_study(postgres_url: str) -> optuna.Study:
    """A study real warm runner trials filled: complete and pruned trials with telemetry."""
    study = study_from_mapping(
        digits_study(
            "dashboard",
            budget={"maxTrials": 6},
            pruner={"type": "Median", "nStartupTrials": 1},
            training={"epochs": 1, "folds": 3},
        )
    )
    ensure_study(open_storage(postgres_url, heartbeat=False), "dashboard", study.spec)
    run_runner(study, postgres_url, "dashboard", install_signal_handlers=False)
    return optuna.load_study(study_name="dashboard", storage=postgres_url)


@pytest.fixture
def served(control_plane_bin_dir: Path, postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """optuna-dashboard with the chart's command and arguments; yields its base URL."""
    container = _dashboard_container(control_plane_bin_dir / "helm", tmp_path)
    image_tag = container["image"].rsplit(":", 1)[1]
    assert image_tag == f"v{importlib.metadata.version('optuna-dashboard')}", container["image"]
    if shutil.which(container["command"][0]) is None:
        message = f"{container['command'][0]} is not on PATH (pip install optuna-dashboard)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            _command(container, postgres_url, port), stdout=output, stderr=output
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(answers, 120, "optuna-dashboard to answer", diagnose=log.read_text)
        yield base
    finally:
        process.terminate()
        stopper = threading.Timer(10, process.kill)
        stopper.start()
        process.wait()
        stopper.cancel()


def test_dashboard_shows_the_study_and_its_trials_in_a_headless_browser(
    dashboard_study: optuna.Study, served: str, tmp_path: Path
) -> None:
    browser = Browser(tmp_path)
    with urllib.request.urlopen(f"{served}/api/studies", timeout=10) as response:
        summaries = json.load(response)["study_summaries"]
    (study_id,) = [s["study_id"] for s in summaries if s["study_name"] == "dashboard"]

    overview = page_text(browser.dom(f"{served}/dashboard/studies/{study_id}"))
    assert "dashboard (id=" in overview, overview[:2000]
    best = dashboard_study.best_trial
    assert f"Best Trial (number={best.number})" in overview, overview[:2000]
    assert "Hyperparameter Importance" in overview

    trials = page_text(browser.dom(f"{served}/dashboard/studies/{study_id}/trials"))
    finished = dashboard_study.get_trials(deepcopy=False)
    assert f"{len(finished)} Trials" in trials, trials[:2000]
    for trial in finished:
        state = trial.state.name.capitalize()
        assert f"Trial {trial.number} {state}" in trials, (trial.number, state, trials[:2000])
    # kubetune's telemetry is visible per trial in the dashboard too.
    assert "kubetune.telemetry" in trials

    shot = browser.screenshot(
        f"{served}/dashboard/studies/{study_id}", tmp_path / "dashboard.png", height=1100
    )
    publish_screenshot(shot)
