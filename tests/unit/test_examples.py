"""The examples work as written: they validate, reach runner pods intact and size as
documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from hpo_operator.manifests import study_document
from hpo_operator.sizing import NodeInfo, Peak, SizingDecision, choose_resource, resolve_peak

from kubetune_api.spec import load_study, study_from_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_exist() -> None:
    assert sorted(EXAMPLES.rglob("*.yaml")), "examples/ must hold study files"


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_example_validates_and_reaches_the_runner_unchanged(path: Path) -> None:
    study = load_study(path)
    document = study_document(study.name, "default", study.spec)
    assert study_from_text(document, "$KUBETUNE_STUDY").spec == study.spec


def test_cpu_example_gets_cpu_runners_with_its_stated_memory() -> None:
    spec = load_study(EXAMPLES / "digits-cpu.yaml").spec
    peak = resolve_peak(spec, None)
    assert peak == Peak(2 * 2**30, "Memory")  # no estimate pod: the memory is stated
    nodes = [
        NodeInfo(
            "gpu", {"nvidia.com/gpu": "8", "memory": "512Gi"}, {"nvidia.com/gpu.memory": "81920"}
        ),
        NodeInfo("cpu", {"memory": "16Gi"}, {}),
    ]
    decision = choose_resource(nodes, spec, peak)
    assert isinstance(decision, SizingDecision)
    assert (decision.kind, decision.resource, decision.quantity) == ("CPU", "memory", "2Gi")


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
