"""The columns ``kubectl get hpostudies`` prints (``additionalPrinterColumns``)."""

from __future__ import annotations

from typing import Any

__all__ = ["printer_columns"]


def printer_columns() -> list[dict[str, Any]]:
    """The printer columns, in order; ``priority: 1`` ones show with ``-o wide``."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    columns = [
        _column("Status", f"{ready}.reason", description="Reason of the Ready condition."),
        _column("Trials", ".status.trialsSummary", description="Finished trials of the budget."),
        _column("Pruned", ".status.trials.pruned", "integer"),
        _column("Failed", ".status.trials.failed", "integer"),
        _column("Best", ".status.best.value", description="Best objective value so far."),
        _column(
            "Front",
            ".status.paretoFront.size",
            "integer",
            description="Trials on the Pareto front (studies with several objectives).",
        ),
        _column("Runners", ".status.runnersSummary", description="Ready of desired runners."),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Stage", ".status.stage.current", "integer", priority=1),
        _column("Best-Trial", ".status.best.trial", "integer", priority=1),
        _column("Resource", ".status.sizing.resource", priority=1),
        _column(
            "Overhead",
            ".status.telemetry.overheadSeconds",
            priority=1,
            description="Mean seconds of a finished trial that were not training or validation.",
        ),
        _column(
            "Packing",
            ".status.telemetry.trialsPerProcess",
            priority=1,
            description="Finished trials per warm runner process.",
        ),
        _column(
            "Per-Device",
            ".status.sizing.trialsPerDevice",
            "integer",
            priority=1,
            description="Runner processes (trials) each runner pod runs on its device.",
        ),
        _column(
            "Device-Use",
            ".status.sizing.packing",
            priority=1,
            description="Estimated peak memory x trials per device / the device's memory.",
        ),
        _column("Ready", f"{ready}.status", priority=1),
    ]
    return columns


def _column(
    name: str, path: str, type_: str = "string", priority: int = 0, description: str = ""
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column
