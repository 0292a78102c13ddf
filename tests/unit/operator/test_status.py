"""The typed status: what the operator writes is JSON users and printer columns read."""

from __future__ import annotations

import kopf
from hpo_operator.reconcile.act import patch_status

from kubetune_api.status import MESSAGE_LIMIT, RunnerCounts, StudyStatus, set_condition
from tests.unit.operator.data import NOW


def test_only_the_fields_a_pass_sets_are_written() -> None:
    status = StudyStatus(start_time="2026-01-02T03:04:05Z")
    status.runners = RunnerCounts(desired=2, ready=1, active=2, failed_pods=0)
    status.completion_time = None  # set to None: removed from the object
    assert status.to_api() == {
        "startTime": "2026-01-02T03:04:05Z",
        "runners": {"desired": 2, "ready": 1, "active": 2, "failedPods": 0},
        "completionTime": None,
    }


def test_status_read_back_from_the_api_keeps_what_it_had_and_drops_unknown_fields() -> None:
    raw = {
        "observedGeneration": 3,
        "sizing": {"floorBytes": 5, "estimateKey": "abc", "somethingOld": 1},
        "trialsSummary": "2/4",
        "legacyPhase": "Running",
    }
    status = StudyStatus.from_api(raw)
    assert status.sizing is not None and status.sizing.floor_bytes == 5
    assert status.to_api() == {
        "observedGeneration": 3,
        "sizing": {"floorBytes": 5, "estimateKey": "abc"},
        "trialsSummary": "2/4",
    }
    assert StudyStatus.from_api(None).to_api() == {}


def test_condition_message_is_cut_to_what_the_crd_accepts() -> None:
    conditions = set_condition([], "Ready", False, "InvalidSpec", "x" * 10_000, 1, NOW)
    assert len(conditions[0].message or "") == MESSAGE_LIMIT


def test_conditions_are_listed_in_a_fixed_order() -> None:
    conditions = set_condition([], "Suspended", False, "NotSuspended", "", 1, NOW)
    conditions = set_condition(conditions, "Ready", True, "RunnersReady", "", 1, NOW)
    conditions = set_condition(conditions, "Failed", False, "Running", "", 1, NOW)
    assert [c.type for c in conditions] == ["Ready", "Failed", "Suspended"]


def test_status_patch_removes_nested_keys_that_disappeared() -> None:
    old = {
        "sizing": {"resource": "memory", "floorBytes": 7},
        "trialsSummary": "1/4",
        "completionTime": "2026-01-02T03:04:05Z",
    }
    new = {"sizing": {"reason": "estimating"}, "completionTime": None}
    patch = kopf.Patch()
    patch_status(patch, old, new)
    assert dict(patch.status) == {
        "sizing": {"resource": None, "floorBytes": None, "reason": "estimating"},
        "completionTime": None,
    }


def test_status_patch_removes_keys_that_disappeared_at_any_depth() -> None:
    """A new best trial without the old best's conditional parameters: the old ones go (a
    merge patch merges nested mappings, so without a null they would stay in the status)."""
    old = {"best": {"trial": 3, "params": {"optimizer": "SGD", "momentum": "0.9"}}}
    new = {"best": {"trial": 5, "params": {"optimizer": "AdamW", "weight_decay": "0.01"}}}
    patch = kopf.Patch()
    patch_status(patch, old, new)
    assert dict(patch.status) == {
        "best": {
            "trial": 5,
            "params": {"optimizer": "AdamW", "weight_decay": "0.01", "momentum": None},
        }
    }


def test_status_patch_leaves_out_what_did_not_change() -> None:
    """A pass that changed nothing writes nothing (no PATCH request in steady state); one that
    changed a field writes that field only."""
    old = {
        "trialsSummary": "1/4",
        "runners": {"desired": 2, "ready": 2},
        "conditions": [{"type": "Ready", "status": "True", "reason": "RunnersReady"}],
    }
    unchanged = kopf.Patch()
    patch_status(unchanged, old, {**old, "completionTime": None})
    assert not unchanged
    changed = kopf.Patch()
    patch_status(changed, old, {**old, "trialsSummary": "2/4"})
    assert dict(changed) == {"status": {"trialsSummary": "2/4"}}


def test_a_null_field_the_server_dropped_is_not_written_again() -> None:
    """A merge patch's null removes the field: the status read back lacks it, and the next
    pass, deciding None again, must not see a change (it did, on every pass, for studies
    whose trials recorded no overhead)."""
    written = {"telemetry": {"overheadSeconds": None, "processes": 10}, "completionTime": None}
    stored = {"telemetry": {"processes": 10}}
    patch = kopf.Patch()
    patch_status(patch, stored, written)
    assert not patch
