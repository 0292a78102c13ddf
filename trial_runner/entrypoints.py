"""Checking ``spec.task.entrypoint`` without importing torch (the CLI stays light)."""

from __future__ import annotations

import importlib.util

__all__ = ["TaskLoadError", "check_entrypoint"]


class TaskLoadError(RuntimeError):
    """``spec.task.entrypoint`` cannot be imported or is not a Task."""


def check_entrypoint(entrypoint: str) -> None:
    """Fail early, without importing the task, when its module cannot be found."""
    module_name = entrypoint.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise TaskLoadError(
            f"spec.task.entrypoint: cannot import module {module_name!r} (not found on the "
            "Python path of this runner)"
        )
