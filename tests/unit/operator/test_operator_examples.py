"""The examples work as written: they validate locally and size as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from hpo_operator.sizing import NodeInfo, Peak, SizingDecision, choose_resource

from trial_runner.spec import load_study

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    study = load_study(path)
    assert len(study.name) <= 48


def test_cpu_example_runs_on_cpu_with_stated_memory() -> None:
    spec = load_study(EXAMPLES / "digits-cpu.yaml").spec
    assert spec.resources.accelerator == "CPU"
    assert spec.task.entrypoint == "trial_runner.tasks.digits:DigitsMLP"
    assert spec.objective.metric == "accuracy"


def test_mig_example_sizes_to_a_mig_slice() -> None:
    spec = load_study(EXAMPLES / "transformer-mig.yaml").spec
    assert spec.resources.accelerator == "MIG"
    nodes = [
        NodeInfo("h100", {"nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"}, {}),
        NodeInfo("cpu", {"memory": "64Gi"}, {}),
    ]
    decision = choose_resource(nodes, spec, Peak(12 * 2**30, "FakeTensor"))
    assert isinstance(decision, SizingDecision)
    assert decision.resource == "nvidia.com/mig-3g.40gb"
