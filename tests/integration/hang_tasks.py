"""Tasks whose training steps never return, or are slow, for the tests of trial time and stall
limits (``test_hung_trials.py``).

:class:`HangingMLP` is the digits MLP whose training step blocks forever on
``threading.Event().wait()``: a call that never returns and that nothing can interrupt from
another thread, as a deadlocked DataLoader or a collective waiting for a lost peer is. Which
trials hang is decided across processes by marker files, so a process started in place of one
that hung does not hang its next trial again:

* ``config.markers``: a directory; a trial is picked if it can create ``pick-<i>`` there for
  some ``i`` below ``config.picks`` (no ``markers``: every trial is picked);
* ``config.hang_at_step``: the training step at which a picked trial blocks forever (1: its
  first; absent: none);
* ``config.slow_seconds``: each training step of a picked trial sleeps this long first (a slow
  trial that keeps making steps).

A trial is picked at its first training step (one fold a trial: each fold builds a model).
The memory estimate runs the model on fake tensors: those never hang or sleep.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from trial_runner.tasks.digits import DigitsMLP


class HangingMLP(DigitsMLP):
    """:class:`DigitsMLP` whose training steps hang or are slow (see the module docstring)."""

    def build_model(self, params: Mapping[str, Any]) -> nn.Module:
        return _Stuck(super().build_model(params), self.config)


def _pick(config: Mapping[str, Any]) -> bool:
    markers = config.get("markers")
    if not markers:
        return True
    for i in range(int(config.get("picks", 1))):
        try:
            os.close(os.open(Path(markers) / f"pick-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


class _Stuck(nn.Module):
    def __init__(self, inner: nn.Module, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.config = dict(config)
        self.steps = 0
        self.picked = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not isinstance(x, FakeTensor):
            self.steps += 1
            if self.steps == 1:
                self.picked = _pick(self.config)
            if self.picked:
                time.sleep(float(self.config.get("slow_seconds", 0)))
                if self.steps == self.config.get("hang_at_step"):
                    threading.Event().wait()
        out: torch.Tensor = self.inner(x)
        return out
