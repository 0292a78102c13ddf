"""Tasks the memory tests estimate (importable by entrypoint, as a runner loads tasks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kubetune_api.spec import HPOStudy
from tests.harness.studies import study_model
from trial_runner.memory import sample_batch
from trial_runner.task import Task, TaskData
from trial_runner.tasks.sequence import SequenceTransformer

__all__ = [
    "SEQUENCE",
    "DataDependentMLP",
    "HugeOnlyOnMeta",
    "SmallMLP",
    "sample",
    "sequence_study",
]


class SmallMLP(Task):
    def load_data(self) -> TaskData:
        gen = torch.Generator().manual_seed(0)
        return TaskData(torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,)))

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        hidden = int(params.get("hidden", 256))
        return nn.Sequential(
            nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )  # fmt: skip


class _DataDependent(nn.Module):
    """Branches on a value and keeps a data-dependent number of rows: no fake tensors."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        if float(out.abs().sum().item()) > 1e12:
            out = out[out.sum(dim=1) > 0]
        return out


class DataDependentMLP(SmallMLP):
    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return _DataDependent(int(params.get("hidden", 256)))


class HugeOnlyOnMeta(SmallMLP):
    """~3.6 GB of weights: must never be built for real by the estimator."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        if torch.get_default_device().type != "meta":
            raise RuntimeError("this test model may only be built on the meta device")
        width = int(self.config.get("width", 30_000))
        return nn.Sequential(nn.Linear(32, width), nn.Linear(width, width), nn.Linear(width, 10))


def sequence_study(**spec_changes: Any) -> HPOStudy:
    """The sequence task with a search space of every kind of parameter."""
    spec: dict[str, Any] = {
        "task": {
            "entrypoint": "trial_runner.tasks.sequence:SequenceTransformer",
            "config": {"n_samples": 32, "seq_len": 16, "channels": 4},
        },
        "searchSpace": [
            {
                "name": "learning_rate",
                "type": "Float",
                "low": "1e-4",
                "high": "1e-1",
                "scale": "Log",
                "group": "Critical",
            },
            {
                "name": "batch_size",
                "type": "Categorical",
                "choices": [16, 64, 32],
                "group": "Critical",
            },
            {
                "name": "d_model",
                "type": "Int",
                "low": 16,
                "high": 48,
                "step": 16,
                "group": "Model",
                "default": 32,
            },
            {
                "name": "norm",
                "type": "Categorical",
                "choices": ["layer", "batch"],
                "group": "Model",
            },
            {
                "name": "ff_mult",
                "type": "Categorical",
                "choices": ["2", "4", "1"],
                "group": "Model",
            },
        ],
        "stages": None,
        "budget": {"maxTrials": 10},
    }
    spec.update(spec_changes)
    return study_model("memory-test", **spec)


SEQUENCE = SequenceTransformer({"n_samples": 32, "seq_len": 32, "channels": 4})


def sample(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight real samples of the task's data, as the estimators get them."""
    return sample_batch(task.load_data())
