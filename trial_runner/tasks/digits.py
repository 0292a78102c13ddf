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
    Conditional spaces (examples/digits-conditional.yaml): ``width_1``, ``width_2``, ... set
    each layer's width (``hidden_size`` where absent); ``optimizer`` ("AdamW" | "SGD" |
    "Adam") with its own parameters: ``momentum_kind`` ("none" | "classic" | "nesterov") and
    ``momentum`` for SGD, ``beta1`` for Adam and AdamW, ``weight_decay`` for AdamW and SGD.
    A parameter absent from the trial (inactive) takes the optimizer's default.
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
        for layer in range(1, layers + 1):
            out = int(params.get(f"width_{layer}", hidden))
            blocks += [nn.Linear(width, out), activation(), nn.Dropout(dropout)]
            width = out
        blocks.append(nn.Linear(width, 10))
        return nn.Sequential(*blocks)

    def build_optimizer(
        self, model: nn.Module, params: Mapping[str, Any], *, fused: bool, foreach: bool
    ) -> torch.optim.Optimizer:
        """``optimizer`` with the parameters that are active for it (AdamW when absent)."""
        kind = str(params.get("optimizer", "AdamW"))
        lr = float(params.get("learning_rate", 1e-3))
        if kind == "SGD":
            momentum = float(params.get("momentum", 0.0))
            return torch.optim.SGD(
                model.parameters(),
                lr=lr,
                momentum=momentum,
                nesterov=params.get("momentum_kind") == "nesterov" and momentum > 0,
                weight_decay=float(params.get("weight_decay", 0.0)),
                foreach=foreach,
            )
        if kind == "Adam":
            return torch.optim.Adam(
                model.parameters(),
                lr=lr,
                betas=(float(params.get("beta1", 0.9)), 0.999),
                fused=fused or None,
                foreach=foreach if not fused else None,
            )
        return torch.optim.AdamW(
            model.parameters(),
            lr=lr,
            betas=(float(params.get("beta1", 0.9)), 0.999),
            weight_decay=float(params.get("weight_decay", 0.01)),
            fused=fused or None,
            foreach=foreach if not fused else None,
        )

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
