"""What a pass reads besides the study: the operator's watch-fed caches (:class:`Indexes`) and
what the operator keeps about the study between passes (:class:`StudyState`, in its memo)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from hpo_operator import _cluster as cluster
from hpo_operator.reconcile._expect import PodExpectations
from hpo_operator.reconcile._observe import ObservedPod
from hpo_operator.sizing import NodeInfo

__all__ = [
    "ALL_NODES",
    "EventIndex",
    "Indexes",
    "Logger",
    "NodeIndex",
    "PodIndex",
    "StudyState",
    "snapshot",
]

#: The pods of each study, by ``(namespace, study)``.
PodIndex = kopf.Index[tuple[str, str], ObservedPod]
#: What sizing needs of each node, all under :data:`ALL_NODES`.
NodeIndex = kopf.Index[str, NodeInfo]
#: The kubelet's ``FailedMount`` events as ``(time, message)``, by ``(namespace, pod uid)``.
EventIndex = kopf.Index[tuple[str, str], tuple[str, str]]
#: The loggers kopf gives handlers.
Logger = logging.Logger | logging.LoggerAdapter[Any]
#: The key of the node index under which every node is found.
ALL_NODES = "nodes"
#: The key of the :class:`StudyState` in a study's memo.
MEMO_KEY = "kubetune"

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(frozen=True)
class Indexes:
    """The watch-fed caches a pass reads (kopf passes them to handlers by name)."""

    pods: PodIndex
    nodes: NodeIndex
    mounts: EventIndex


def snapshot(index: kopf.Index[_K, _V], key: _K) -> list[_V]:
    """The values under ``key``, copied. The watches update the indexes on kopf's event loop
    while passes read them in worker threads: a copy that meets an update starts over."""
    while True:
        try:
            return list(index.get(key, ()))
        except RuntimeError:  # "changed size during iteration"
            continue


@dataclass
class StudyState:
    """What the operator keeps about one study between passes, in the study's kopf memo
    (kopf drops it with the study)."""

    #: One pass of the study at a time (its change handlers and its timer run concurrently).
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The study in its storage: loaded once, its warm start's report.
    storage: cluster.StudyStorage = field(default_factory=cluster.StudyStorage)
    #: Pods this operator created or deleted that the pod cache does not show yet.
    pods: PodExpectations = field(default_factory=PodExpectations)
    #: The spec document last written to the ``<study>-spec`` ConfigMap.
    spec_written: str | None = None
    #: The URL last written to the default-storage Secret.
    secret_written: str | None = None
    #: ``(secret, key)``, the URL read from it, and when (monotonic).
    secret_url: tuple[tuple[str, str], str, float] | None = None
    #: The resourceVersion of the body the last pass decided on, and the status it wrote.
    written: tuple[str, Mapping[str, Any]] = ("", {})

    @classmethod
    def of(cls, memo: kopf.Memo) -> StudyState:
        """The state in a study's memo (made on its first pass)."""
        state = memo.get(MEMO_KEY)
        if not isinstance(state, cls):
            state = memo.setdefault(MEMO_KEY, cls())
        return state
