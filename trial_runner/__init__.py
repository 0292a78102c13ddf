"""kubetune's trial runner: one warm process that runs many Optuna trials in sequence."""

from __future__ import annotations

__version__ = "0.1.0"
