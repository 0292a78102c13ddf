"""The GPU check (bench/gpu_check.py) runs its CPU mode in the suite: the same code that checks
a GPU, with every check that can run without one passing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ON_CPU = {"estimate", "oom-training", "oom-validation", "baseline", "shared-device"}
GPU_ONLY = {"driver", "nvml", "numerics"}


@pytest.mark.timeout(600)
def test_the_gpu_check_passes_what_it_can_check_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
         "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=540,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    statuses = {(row["check"], row["status"]) for row in rows}
    assert {check for check, _ in statuses} == ON_CPU | GPU_ONLY
    assert {check for check, status in statuses if status == "pass"} == ON_CPU
    assert {check for check, status in statuses if status == "n/a"} == GPU_ONLY
    assert "check            status detail" in run.stdout
