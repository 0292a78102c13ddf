"""A Transformer encoder classifying generated multichannel time series.

Its memory grows with ``d_model``, ``n_layers`` and the sequence length, which gives the
memory estimator and the micro-batch planner something real to size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trial_runner.task import Task, TaskData

__all__ = ["SequenceTransformer"]


class SequenceTransformer(Task):
    """Which of ``n_classes`` oscillation patterns does a noisy series follow?

    Config: ``n_samples`` (1024), ``seq_len`` (64), ``channels`` (4), ``n_classes`` (4),
    ``noise`` (0.8), ``seed`` (0). Trial parameters: ``d_model`` (64), ``n_layers`` (2),
    ``n_heads`` (4; reduced to a divisor of d_model), ``ff_mult`` (2), ``dropout`` (0.1),
    ``learning_rate``, ``weight_decay``.
    """

    def load_data(self) -> TaskData:
        n = int(self.config.get("n_samples", 1024))
        length = int(self.config.get("seq_len", 64))
        channels = int(self.config.get("channels", 4))
        classes = int(self.config.get("n_classes", 4))
        noise = float(self.config.get("noise", 0.8))
        gen = torch.Generator().manual_seed(int(self.config.get("seed", 0)))
        labels = torch.randint(0, classes, (n,), generator=gen)
        t = torch.arange(length, dtype=torch.float32) / length
        freqs = 1.0 + torch.arange(classes, dtype=torch.float32) * 1.5
        phase = torch.rand(n, channels, 1, generator=gen) * 2 * math.pi
        base = torch.sin(2 * math.pi * freqs[labels].view(n, 1, 1) * t.view(1, 1, -1) + phase)
        series = base + noise * torch.randn(n, channels, length, generator=gen)
        return TaskData(inputs=series.transpose(1, 2).contiguous(), targets=labels)

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        d_model = int(params.get("d_model", 64))
        heads = int(params.get("n_heads", 4))
        while d_model % heads:
            heads -= 1
        return _Encoder(
            channels=int(self.config.get("channels", 4)),
            classes=int(self.config.get("n_classes", 4)),
            seq_len=int(self.config.get("seq_len", 64)),
            d_model=d_model,
            layers=int(params.get("n_layers", 2)),
            heads=heads,
            ff=int(params.get("ff_mult", 2)) * d_model,
            dropout=float(params.get("dropout", 0.1)),
        )


class _Encoder(nn.Module):
    def __init__(
        self,
        *,
        channels: int,
        classes: int,
        seq_len: int,
        d_model: int,
        layers: int,
        heads: int,
        ff: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, d_model)
        self.position = nn.Parameter(torch.zeros(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[:, : x.shape[1]]
        h = self.encoder(h)
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]
