"""Classify spectra kept as one float32 file on a volume the runner pods mount.

What a team's own task usually looks like: its data set lives on a PersistentVolumeClaim, too
large to load into every process, so a torch ``Dataset`` reads samples from a memory map and
``training.dataLoaderWorkers`` processes prepare batches (several MiB each) beside the trials.
The data set's manifest records a digest of the access token it was published with, and the
task refuses data whose token it was not given (``DATASET_TOKEN``, from a Secret through the
pod template's ``envFrom``).

Files in ``config.dataDir`` (default ``/data``), as :meth:`SpectraFiles.write` writes them:

* ``spectra.json``: ``{"samples": N, "channels": C, "length": L, "classes": K,
  "labels": [...], "tokenSha256": "..."}``
* ``spectra.f32``: ``N x C x L`` float32 values, C-ordered.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trial_runner.task import Task, TaskData

__all__ = ["SpectraClassifier", "SpectraFiles"]

TOKEN_ENV = "DATASET_TOKEN"


@dataclass(frozen=True)
class SpectraFiles:
    """The data set's two files in ``root``."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "spectra.json"

    @property
    def values(self) -> Path:
        return self.root / "spectra.f32"

    def write(
        self, samples: int, channels: int, length: int, classes: int, token: str, seed: int = 0
    ) -> None:
        """Write a learnable data set: each class raises its own band of channels."""
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, classes, size=samples)
        band = max(1, channels // classes)
        values = np.memmap(
            self.values, dtype=np.float32, mode="w+", shape=(samples, channels, length)
        )
        for i, label in enumerate(labels):
            sample = rng.standard_normal((channels, length), dtype=np.float32)
            sample[label * band : (label + 1) * band] += 1.0
            values[i] = sample
        values.flush()
        del values
        self.manifest.write_text(
            json.dumps(
                {
                    "samples": samples,
                    "channels": channels,
                    "length": length,
                    "classes": classes,
                    "labels": [int(x) for x in labels],
                    "tokenSha256": hashlib.sha256(token.encode()).hexdigest(),
                }
            )
        )


class SpectraDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples read from the memory-mapped file; each worker process maps it on first use."""

    def __init__(self, path: Path, shape: Sequence[int], labels: Sequence[int]) -> None:
        self.path = path
        self.shape = tuple(shape)
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self._values: np.memmap[Any, Any] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._values is None:
            self._values = np.memmap(self.path, dtype=np.float32, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._values[index])), self.labels[index]

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the path, never a copy of the mapped data.
        return {**self.__dict__, "_values": None}


class SpectraClassifier(Task):
    """A small convolutional classifier of spectra.

    Parameters read from a trial: ``learning_rate``, ``width`` (32), ``dropout`` (0.1).
    Config: ``dataDir`` (``/data``).
    """

    metrics = ("accuracy",)

    def load_data(self) -> TaskData:
        files = SpectraFiles(Path(str(self.config.get("dataDir", "/data"))))
        manifest = json.loads(files.manifest.read_text())
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise RuntimeError(f"{TOKEN_ENV} is not set: give the pods the data set's Secret")
        if hashlib.sha256(token.encode()).hexdigest() != manifest["tokenSha256"]:
            raise RuntimeError(f"{TOKEN_ENV} is not the token this data set was published with")
        self.channels = int(manifest["channels"])
        self.classes = int(manifest["classes"])
        shape = (int(manifest["samples"]), self.channels, int(manifest["length"]))
        dataset = SpectraDataset(files.values, shape, manifest["labels"])
        return TaskData(inputs=dataset, targets=dataset.labels, classification=True)

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        width = int(params.get("width", 32))
        return nn.Sequential(
            nn.Conv1d(self.channels, width, kernel_size=5, stride=4),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Dropout(float(params.get("dropout", 0.1))),
            nn.Linear(width, self.classes),
        )
