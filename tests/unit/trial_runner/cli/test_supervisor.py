"""``kubetune run``'s supervisor: runners start before the study is set up and wait at a gate;
the supervisor wakes when a runner exits instead of polling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_api.contract import START_GATE_FD_ENV
from kubetune_study.storage import claim_lock
from trial_runner.cli._common import CliError
from trial_runner.cli._start_gate import wait_for_start_gate
from trial_runner.cli._supervisor import Supervisor


def test_a_runner_passes_the_gate_once_it_opens_and_stops_when_it_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read, write = os.pipe()
    os.write(write, b"g")
    monkeypatch.setenv(START_GATE_FD_ENV, str(read))
    wait_for_start_gate()  # returns: the gate is open
    assert START_GATE_FD_ENV not in os.environ  # a runner it starts later is not gated

    read, closed = os.pipe()
    os.close(closed)  # kubetune run gave up before setting the study up
    monkeypatch.setenv(START_GATE_FD_ENV, str(read))
    with pytest.raises(CliError, match="stopped before the study was set up"):
        wait_for_start_gate()
    os.close(write)


@pytest.mark.timeout(120)
def test_the_supervisor_wakes_when_a_runner_exits(tmp_path: Path) -> None:
    supervisor = Supervisor(["study.yaml"], 1, "s", tmp_path)
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    supervisor.procs[0] = quick
    # Without a wake-up this would wait the full timeout (the test's own timeout fails it).
    supervisor.wait(timeout=3600)
    assert quick.wait(timeout=5) == 0


#: A stand-in runner that follows the start protocol: the n-th to start takes n seconds to
#: "load its task", says it is ready and waits at the gate, then records both moments.
LOADS_THEN_CLAIMS = """
import os, sys, time
from pathlib import Path
from trial_runner.cli._start_gate import wait_for_start_gate
out = Path(sys.argv[1])
n = 0
while True:
    try:
        os.close(os.open(out / f"slot-{n}", os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        n += 1
if (out / f"dies-{n}").exists():
    sys.exit(0)
time.sleep(n)
ready = time.time()
wait_for_start_gate()
(out / f"times-{n}").write_text(f"{ready} {time.time()}")
"""


@pytest.mark.timeout(120)
def test_the_gate_opens_once_every_runner_has_loaded_its_task(tmp_path: Path) -> None:
    supervisor = Supervisor([str(tmp_path)], 3, "s", tmp_path)
    supervisor.command = [sys.executable, "-c", LOADS_THEN_CLAIMS]
    supervisor.start(gated=True)
    supervisor.open_gate()  # the study is set up at once; the slowest runner takes 2 s
    supervisor.supervise(None, claim_lock(f"journal:{tmp_path}/s.journal", "s"), lambda: False)
    assert supervisor.error is None
    times = [[float(x) for x in (tmp_path / f"times-{n}").read_text().split()] for n in range(3)]
    slowest_ready = max(ready for ready, _ in times)
    assert slowest_ready - min(ready for ready, _ in times) > 1.5  # they did load unevenly
    assert all(claimed >= slowest_ready for _, claimed in times), times


@pytest.mark.timeout(60)
def test_a_runner_that_dies_loading_does_not_hold_the_others(tmp_path: Path) -> None:
    (tmp_path / "dies-1").touch()
    supervisor = Supervisor([str(tmp_path)], 3, "s", tmp_path)
    supervisor.command = [sys.executable, "-c", LOADS_THEN_CLAIMS]
    supervisor.start(gated=True)
    supervisor.open_gate()
    # (the barrier's own limit is 120 s: waiting for the dead one fails the test's timeout)
    supervisor.supervise(None, claim_lock(f"journal:{tmp_path}/s.journal", "s"), lambda: False)
    claimed = sorted(p.name for p in tmp_path.glob("times-*"))
    assert claimed == ["times-0", "times-2"], claimed


#: A stand-in runner that writes the GPUs it was given into a file of its own.
SAYS_ITS_GPUS = """
import os, sys
from pathlib import Path
out = Path(sys.argv[1])
(out / str(os.getpid())).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "all"))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("devices", "seen"),
    [
        (["0", "1"], ["0", "0", "1"]),
        (["GPU-aaaa", "GPU-bbbb", "GPU-cccc"], ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]),
        (["0"], ["all", "all", "all"]),
        ([], ["all", "all", "all"]),
    ],
)
def test_local_workers_take_the_machines_gpus_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: list[str], seen: list[str]
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    supervisor = Supervisor([str(tmp_path)], 3, "s", None, devices=devices)
    supervisor.command = [sys.executable, "-c", SAYS_ITS_GPUS]
    supervisor.start()
    assert [p.wait(timeout=60) for p in supervisor.procs.values()] == [0, 0, 0]
    assert sorted(f.read_text() for f in tmp_path.iterdir()) == seen


def test_the_visible_gpus_are_cudas_list_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from trial_runner.device import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


SAYS_ITS_SHARE = """
import os, sys
from pathlib import Path
(Path(sys.argv[1]) / str(os.getpid())).write_text(os.environ["KUBETUNE_DEVICE_SHARE"])
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("devices", "share"), [([], "4"), (["0"], "4"), (["0", "1"], "2")])
def test_each_process_is_told_how_many_share_its_device(
    tmp_path: Path, devices: list[str], share: str
) -> None:
    supervisor = Supervisor([str(tmp_path)], 4, "s", None, devices=devices)
    supervisor.command = [sys.executable, "-c", SAYS_ITS_SHARE]
    supervisor.start()
    assert [p.wait(timeout=60) for p in supervisor.procs.values()] == [0, 0, 0, 0]
    assert sorted(f.read_text() for f in tmp_path.iterdir()) == [share] * 4
