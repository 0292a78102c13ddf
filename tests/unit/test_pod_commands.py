"""The command lines the operator puts in its pods are ones the ``kubetune`` CLI parses.

The operator (hpo_operator.pods) and the CLI (trial_runner.cli) share the command and option
names through kubetune_api.contract and import nothing of each other; this test, which sees
both, checks that what one writes the other reads.
"""

from __future__ import annotations

import dataclasses

from hpo_operator.config import OperatorConfig
from hpo_operator.pods import estimate_pod, runner_pod
from hpo_operator.sizing import Peak, SizingDecision

from tests.unit.operator.data import OWNER, make_spec
from trial_runner.cli import build_parser
from trial_runner.cli._runner import cmd_runner
from trial_runner.cli.estimate import cmd_estimate

GPU = SizingDecision("GPU", "nvidia.com/gpu", "1", 80 * 10**9, 2**34, Peak(2**33, "Spec"), "r")


def _command(pod: dict[str, object]) -> list[str]:
    container = pod["spec"]["containers"][0]  # type: ignore[index]
    return [*container["command"], *container.get("args", [])]


def test_the_runner_pods_command_line_parses_to_the_runner_command() -> None:
    sized = dataclasses.replace(GPU, trials_per_device=3)
    pod = runner_pod(OWNER, make_spec(), 0, sized, ("pg", "url"), OperatorConfig())
    command = _command(pod)
    assert command[0] == "kubetune"
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_runner
    assert args.study_name
    assert args.termination_message_path
    assert args.processes == 3


def test_the_estimate_pods_command_line_parses_to_the_estimate_command() -> None:
    command = _command(estimate_pod(OWNER, make_spec(), "key", OperatorConfig()))
    assert command[0] == "kubetune"
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_estimate
    assert args.json is True
    assert args.termination_message_path
