"""Pods from a watch-fed cache: what the operator wrote and the cache does not show yet.

The pass after a create or a delete may run before the watch event that shows it. These tests
run two passes of the real decision over a cache that lags, and check that nothing is created
twice and no failed pod is counted twice.
"""

from __future__ import annotations

from hpo_operator.config import OperatorConfig
from hpo_operator.pods import runner_pod
from hpo_operator.reconcile import ObservedPod, PodExpectations, observe_pod

from tests.unit.operator.data import OWNER, make_progress, make_spec
from tests.unit.operator.test_reconcile import CPU, creates, deletes, run, runner


def _created(index: int) -> ObservedPod:
    """The pod as the operator created it (its manifest, no status yet)."""
    spec = make_spec()
    manifest = runner_pod(OWNER, spec, index, CPU, ("digits-storage", "url"), OperatorConfig())
    return observe_pod(manifest)


def test_runners_created_but_not_yet_cached_are_not_created_again() -> None:
    expectations = PodExpectations()
    first = run(expectations.children([], now=0.0))
    assert creates(first) == [0, 1]
    for index in creates(first):
        expectations.created(_created(index), now=0.0)
    # The next pass, a second later, finds the cache still empty.
    children = expectations.children([], now=1.0)
    assert [(p.name, p.phase, p.index) for p in children] == [
        ("digits-runner-0", "Pending", 0),
        ("digits-runner-1", "Pending", 1),
    ]
    second = run(children)
    assert creates(second) == [] and deletes(second) == []
    assert not any(e.reason == "RunnersCreated" for e in second.events)


def test_an_expectation_ends_when_the_cache_shows_the_pod_or_after_the_ttl() -> None:
    expectations = PodExpectations(ttl=30.0)
    expectations.created(_created(0), now=0.0)
    expectations.created(_created(1), now=0.0)
    cached = [runner(0, phase="Running")]
    children = expectations.children(cached, now=1.0)
    assert sorted((p.name, p.phase) for p in children) == [
        ("digits-runner-0", "Running"),  # the cache's view wins once it has the pod
        ("digits-runner-1", "Pending"),
    ]
    # Runner 0 is forgotten for good: when it goes from the cache, it is gone.
    assert [p.name for p in expectations.children([], now=2.0)] == ["digits-runner-1"]
    # A create whose watch event never came is decided on from the cache again.
    assert expectations.children([], now=31.0) == []
    assert not expectations


def test_a_failed_runner_deleted_last_pass_is_not_counted_again() -> None:
    expectations = PodExpectations()
    failed = runner(0, phase="Failed", exit_code=1)
    first = run(expectations.children([failed, runner(1)], now=0.0), make_progress(running=1))
    assert deletes(first) == ["digits-runner-0"]
    assert first.status.runners is not None and first.status.runners.failed_pods == 1
    expectations.deleted(deletes(first), now=0.0)
    # The cache still shows the failed pod, without its deletion timestamp.
    children = expectations.children([failed, runner(1)], now=1.0)
    assert [p.deleting for p in children] == [True, False]
    second = run(children, make_progress(running=1), first.status)
    assert deletes(second) == [] and creates(second) == []
    assert second.status.runners is not None and second.status.runners.failed_pods == 1
    assert not any(e.reason == "RunnerFailed" for e in second.events)
    # Once the cache drops it, runner 0 is replaced.
    gone = expectations.children([runner(1)], now=2.0)
    assert creates(run(gone, make_progress(running=1), second.status)) == [0]
    assert not expectations
