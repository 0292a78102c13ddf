"""Keep only the best trial's weights, safely with several runner processes.

The directory holds ``best.pt`` (state dict, trial number, value, params) and ``best.json``.
A finishing trial takes an exclusive ``flock`` on the directory's lock file, compares itself
with the recorded best and, if better, writes to a temporary file and renames it over
``best.pt`` (atomic on one file system), so readers never see a half-written file and the
weights of worse trials are never kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune_api.spec import Objective

__all__ = ["BestCheckpoint"]


class BestCheckpoint:
    """The best trial's weights in ``directory``, as judged by ``objective``."""

    def __init__(self, directory: Path, objective: Objective) -> None:
        self.directory = directory
        self.objective = objective

    def best(self) -> dict[str, Any] | None:
        path = self.directory / "best.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def offer(self, trial: int, value: float, model: nn.Module, params: Mapping[str, Any]) -> bool:
        """Store the model if its value beats the stored best; True when it was stored."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.best()
            if current is not None and not self.objective.better(value, float(current["value"])):
                return False
            record = {"trial": trial, "value": value, "params": dict(params)}
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".best-", suffix=".pt")
            os.close(fd)
            torch.save({"state_dict": state, **record}, tmp)
            os.replace(tmp, self.directory / "best.pt")
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".best-", suffix=".json")
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, default=str)
            os.replace(tmp, self.directory / "best.json")
            return True
