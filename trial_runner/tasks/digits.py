"""Handwritten digits (scikit-learn's bundled 8×8 images, no download) with an MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trial_runner.task import Task, TaskData

__all__ = ["DigitsMLP"]


class DigitsMLP(Task):
    """Classify scikit-learn's 1,797 handwritten digits.

    Parameters read from a trial: ``hidden_size`` (128), ``n_layers`` (2), ``dropout`` (0.1),
    ``activation`` ("relu" | "gelu" | "tanh"), ``learning_rate``, ``weight_decay``.
    Config: ``repeat`` (1) tiles the data set to make epochs longer for benchmarks.
    Metrics: ``accuracy``, ``f1_macro`` and ``parameters`` (the model's parameter count, to
    trade accuracy against size with several objectives).
    """

    metrics = ("accuracy", "f1_macro", "parameters")

    def load_data(self) -> TaskData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        inputs = torch.tensor(digits.data, dtype=torch.float32)
        inputs = (inputs - inputs.mean(0)) / (inputs.std(0) + 1e-6)
        targets = torch.tensor(digits.target, dtype=torch.long)
        repeat = int(self.config.get("repeat", 1))
        if repeat > 1:
            inputs, targets = inputs.repeat(repeat, 1), targets.repeat(repeat)
        return TaskData(inputs=inputs, targets=targets, classification=True)

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        hidden = int(params.get("hidden_size", 128))
        layers = int(params.get("n_layers", 2))
        dropout = float(params.get("dropout", 0.1))
        activation = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[
            str(params.get("activation", "relu"))
        ]
        blocks: list[nn.Module] = []
        width = 64
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 10))
        return nn.Sequential(*blocks)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        predicted = outputs.argmax(dim=-1)
        accuracy = float((predicted == targets).float().mean().item())
        f1s = []
        for c in range(10):
            tp = float(((predicted == c) & (targets == c)).sum())
            fp = float(((predicted == c) & (targets != c)).sum())
            fn = float(((predicted != c) & (targets == c)).sum())
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return {"accuracy": accuracy, "f1_macro": sum(f1s) / len(f1s)}

    def model_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"parameters": float(sum(p.numel() for p in model.parameters()))}
