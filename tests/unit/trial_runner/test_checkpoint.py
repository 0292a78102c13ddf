"""Only the best trial's weights are kept, judged by the objective's direction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kubetune_api.spec import Objective
from trial_runner.checkpoint import BestCheckpoint


def _model(fill: float) -> nn.Module:
    model = nn.Linear(2, 1)
    nn.init.constant_(model.weight, fill)
    return model


def test_a_better_trial_replaces_the_weights_and_a_worse_one_does_not(tmp_path: Path) -> None:
    checkpoint = BestCheckpoint(tmp_path, Objective(metric="accuracy", direction="Maximize"))
    assert checkpoint.best() is None
    assert checkpoint.offer(0, 0.5, _model(1.0), {"lr": 0.1})
    assert checkpoint.offer(1, 0.7, _model(2.0), {"lr": 0.2})
    assert not checkpoint.offer(2, 0.6, _model(3.0), {"lr": 0.3})
    assert not checkpoint.offer(3, 0.7, _model(4.0), {"lr": 0.4})  # a tie keeps the first
    assert checkpoint.best() == {"trial": 1, "value": 0.7, "params": {"lr": 0.2}}
    saved = torch.load(tmp_path / "best.pt", weights_only=False)
    assert saved["trial"] == 1 and torch.all(saved["state_dict"]["weight"] == 2.0)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "best.json",
        "best.pt",
    ]
    assert not list(tmp_path.glob(".best-*")), "no temporary files left behind"


def test_minimize_keeps_the_lowest_value(tmp_path: Path) -> None:
    checkpoint = BestCheckpoint(tmp_path / "ckpt", Objective(metric="loss", direction="Minimize"))
    assert checkpoint.offer(0, 0.5, _model(1.0), {})
    assert not checkpoint.offer(1, 0.9, _model(2.0), {})
    assert checkpoint.offer(2, 0.1, _model(3.0), {})
    best = checkpoint.best()
    assert best is not None and (best["trial"], best["value"]) == (2, 0.1)
