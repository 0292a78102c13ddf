"""The task's data, split into folds and served in batches, loaded once per process.

Tensor data that fits is moved to the device once and batched by indexing it there (one
gather and one split per epoch); anything else is served by one persistent DataLoader whose
batch sampler changes indices and batch size per fold and trial without new workers.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from kubetune_api.spec import Training
from trial_runner.task import TaskData

#: The most bytes of training data one gather of an epoch's shuffled batches copies on the
#: device (a whole batch when one is larger).
GATHER_BYTES = 64 * 2**20

__all__ = ["FoldedData", "make_folds"]


def make_folds(
    n: int, folds: int, labels: np.ndarray | None, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs; stratified when labels are given.

    ``folds == 1`` is a single 80/20 holdout split.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    index = np.arange(n)
    if folds == 1:
        stratify = labels if labels is not None and _stratifiable(labels, 5) else None
        train, val = train_test_split(index, test_size=0.2, random_state=seed, stratify=stratify)
        return [(np.sort(train), np.sort(val))]
    if labels is not None and _stratifiable(labels, folds):
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(index, labels)]
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(index)]


def _stratifiable(labels: np.ndarray, folds: int) -> bool:
    _, counts = np.unique(labels, return_counts=True)
    return bool(counts.min() >= folds)


class _ReconfigurableBatchSampler(Sampler[list[int]]):
    """Yields index batches; indices and batch size change per fold/trial without new workers.

    The batch sampler lives in the main process, so a persistent DataLoader picks up the new
    configuration at the next ``iter()``; its worker processes are never re-created.
    """

    def __init__(self) -> None:
        self.indices: np.ndarray = np.arange(0)
        self.batch_size = 1
        self.shuffle = False
        self.seed = 0

    def configure(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> None:
        self.indices, self.batch_size, self.shuffle, self.seed = indices, batch_size, shuffle, seed

    def __iter__(self) -> Iterator[list[int]]:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng(self.seed).permutation(order)
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)


class FoldedData:
    """A task's data on (or for) one device, its folds, and batches of any size from them."""

    def __init__(self, data: TaskData, training: Training, device: torch.device, seed: int) -> None:
        self.data = data
        self.training = training
        self.device = device
        self.seed = seed
        labels = None
        if data.classification and data.targets is not None:
            labels = data.targets.detach().cpu().numpy()
            if labels.ndim != 1:
                labels = None
        self.folds = make_folds(len(data), training.folds, labels, seed)
        self.on_device = self._place_tensors()
        self._sampler = _ReconfigurableBatchSampler()
        self._loader: DataLoader[Any] | None = None
        if not self.on_device:
            self._loader = self._build_loader()

    @property
    def validation_rows(self) -> int:
        """Samples of the largest validation split."""
        return max(len(val) for _, val in self.folds)

    def _place_tensors(self) -> bool:
        """Keep tensor data on the device when it fits; True when batches index it directly."""
        data = self.data
        if not isinstance(data.inputs, torch.Tensor) or data.targets is None:
            return False
        if self.training.data_loader_workers > 0:
            return False
        size = data.inputs.element_size() * data.inputs.nelement()
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if size > 0.25 * free:
                return False
        self.inputs = data.inputs.to(self.device)
        self.targets = data.targets.to(self.device)
        return True

    def _build_loader(self) -> DataLoader[Any]:
        dataset: Dataset[Any]
        if isinstance(self.data.inputs, torch.Tensor):
            assert self.data.targets is not None
            dataset = TensorDataset(self.data.inputs, self.data.targets)
        else:
            dataset = self.data.inputs
        workers = self.training.data_loader_workers
        return DataLoader(
            dataset,
            batch_sampler=self._sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            multiprocessing_context="spawn" if workers > 0 else None,
            # Its own generator: creating an iterator must not consume the global one that
            # seeds each trial's model and dropout.
            generator=torch.Generator().manual_seed(self.seed),
        )

    @property
    def pin_memory(self) -> bool:
        return self.training.pin_memory and self.device.type == "cuda"

    @property
    def loader(self) -> DataLoader[Any] | None:
        """The persistent DataLoader (``None`` when batches come from device tensors)."""
        return self._loader

    def reset_loaders(self) -> None:
        """Re-create the DataLoader and its workers (only benchmarks want this)."""
        if self.on_device:
            return
        self._loader = None
        gc.collect()
        self._loader = self._build_loader()

    def close(self) -> None:
        self._loader = None
        gc.collect()

    def _gather_rows(self, batch_size: int) -> int:
        """Rows of one gather: whole batches, as many as fit :data:`GATHER_BYTES` (one at least)."""
        row_bytes = sum(t[:1].numel() * t.element_size() for t in (self.inputs, self.targets))
        return batch_size * max(1, GATHER_BYTES // max(1, row_bytes * batch_size))

    def batches(
        self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, targets)`` on the device, ``batch_size`` samples of ``indices`` at a time."""
        if self.on_device:
            order = torch.as_tensor(indices, device=self.device)
            if shuffle:
                gen = torch.Generator().manual_seed(seed)
                order = order[torch.randperm(len(order), generator=gen).to(self.device)]
            # A few gathers per epoch, each of whole batches and at most GATHER_BYTES (or one
            # batch), then contiguous views made by one split call each: slicing in Python cost
            # more than the data movement for small models, and one gather of the whole split
            # would be a second copy of it on the device, which no estimate counts.
            for chunk in torch.split(order, self._gather_rows(batch_size)):
                inputs, targets = self.inputs[chunk], self.targets[chunk]
                yield from zip(
                    torch.split(inputs, batch_size), torch.split(targets, batch_size), strict=True
                )
            return
        assert self._loader is not None
        self._sampler.configure(indices, batch_size, shuffle, seed)
        for inputs, targets in self._loader:
            yield (
                inputs.to(self.device, non_blocking=self.pin_memory),
                targets.to(self.device, non_blocking=self.pin_memory),
            )
