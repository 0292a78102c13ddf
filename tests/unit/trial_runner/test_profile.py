"""Which trials are profiled, where their traces go, and what a trace holds (CPU, real torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune_api.spec import Profile
from tests.harness.studies import spec_model
from trial_runner.profile import profile_directory, record_trace, should_profile, trace_path


def test_first_profiles_the_first_trial_of_each_process_whatever_its_number() -> None:
    first = Profile(trials="First")
    assert should_profile(first, trial_number=17, trials_in_process=0)
    assert not should_profile(first, trial_number=18, trials_in_process=1)
    assert not should_profile(None, trial_number=0, trials_in_process=0)


def test_every_n_profiles_trial_numbers_that_are_multiples() -> None:
    every = Profile(trials="EveryN", every=5)
    chosen = [n for n in range(12) if should_profile(every, n, trials_in_process=n % 3)]
    assert chosen == [0, 5, 10]


def test_traces_go_to_the_directory_given_else_beside_checkpoints_else_tmp() -> None:
    given = spec_model(training={"profile": {"directory": "/data/traces"}}).training
    assert profile_directory(given, "team.s") == Path("/data/traces")
    beside = spec_model(
        training={"profile": {}, "checkpoint": {"directory": "/data/ckpt"}}
    ).training
    assert profile_directory(beside, "team.s") == Path("/data/ckpt/profiles")
    default = spec_model(training={"profile": {}}).training
    assert profile_directory(default, "team-a.digits/x", "/tmp") == Path(
        "/tmp/kubetune-profiles/team-a.digits_x"
    )
    # A retried trial runs in another process: its trace does not overwrite the first.
    assert trace_path(Path("/t"), 3, "runner-0:41") != trace_path(Path("/t"), 3, "runner-1:7")
    assert trace_path(Path("/t"), 3, "runner-0:41").name == "trial-00003-runner-0_41.pt.trace.json"


def test_a_trace_is_written_in_chrome_format_even_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "trace.json"
    with pytest.raises(ValueError), record_trace(path, torch.device("cpu")):
        torch.mm(torch.ones(8, 8), torch.ones(8, 8))
        raise ValueError("the task failed")
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e.get("name") == "aten::mm" for e in events)
