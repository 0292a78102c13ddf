"""``kubetune run``'s supervisor: runners start before the study is set up and wait at a gate;
the supervisor wakes when a runner exits instead of polling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trial_runner.cli._common import CliError
from trial_runner.cli._run import _Supervisor, _wait_for_start_gate
from trial_runner.contract import START_GATE_FD_ENV


def test_a_runner_passes_the_gate_once_it_opens_and_stops_when_it_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read, write = os.pipe()
    os.write(write, b"g")
    monkeypatch.setenv(START_GATE_FD_ENV, str(read))
    _wait_for_start_gate()  # returns: the gate is open
    assert START_GATE_FD_ENV not in os.environ  # a runner it starts later is not gated

    read, closed = os.pipe()
    os.close(closed)  # kubetune run gave up before setting the study up
    monkeypatch.setenv(START_GATE_FD_ENV, str(read))
    with pytest.raises(CliError, match="stopped before the study was set up"):
        _wait_for_start_gate()
    os.close(write)


@pytest.mark.timeout(120)
def test_the_supervisor_wakes_when_a_runner_exits(tmp_path: Path) -> None:
    supervisor = _Supervisor(["study.yaml"], 1, "s", tmp_path)
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    supervisor.procs[0] = quick
    # Without a wake-up this would wait the full timeout (the test's own timeout fails it).
    supervisor.wait(timeout=3600)
    assert quick.wait(timeout=5) == 0
