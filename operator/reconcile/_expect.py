"""What the operator did that its watch-fed pod cache may not show yet (pure).

The study's pods come from a cache that a watch keeps (see :mod:`hpo_operator.handlers`), not
from a list call per pass. A pod this operator created a moment ago may not be in the cache on
the next pass, and one it deleted may still be there without its deletion timestamp. Taken at
face value, the next pass would create the pod again (an "already exists" answer, and a second
``RunnersCreated`` event) or delete it again. :class:`PodExpectations` remembers those writes
until the cache shows them, or until ``ttl`` seconds have passed (a write whose watch event was
lost is then decided on from the cache again), and :meth:`PodExpectations.children` merges them
into what the decision sees. The same pattern as the "expectations" of Kubernetes' own
controllers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hpo_operator.reconcile._observe import ObservedPod

__all__ = ["PodExpectations"]

#: Seconds a write is expected to show in the cache; a watch event is usually there in
#: milliseconds, and a watch that broke is re-established within seconds.
EXPECTATION_TTL = 60.0


@dataclass
class PodExpectations:
    """Pods created and deleted by this operator that its cache has not shown yet.

    Not thread-safe: one pass of a study runs at a time (the study's lock).
    """

    ttl: float = EXPECTATION_TTL
    _created: dict[str, tuple[ObservedPod, float]] = field(default_factory=dict)
    _deleted: dict[str, float] = field(default_factory=dict)

    def created(self, pod: ObservedPod, now: float) -> None:
        """``pod`` was created (or found to exist) at ``now`` (a monotonic clock)."""
        self._created[pod.name] = (pod, now)
        self._deleted.pop(pod.name, None)

    def deleted(self, names: Iterable[str], now: float) -> None:
        """The pods named were deleted at ``now``."""
        for name in names:
            self._deleted[name] = now
            self._created.pop(name, None)

    def children(self, cached: Sequence[ObservedPod], now: float) -> list[ObservedPod]:
        """The study's pods as the decision should see them: the cached ones (those this
        operator deleted marked as being deleted), and the ones it created that the cache
        does not show yet. Expectations the cache now shows, or that are older than the
        ``ttl``, are forgotten."""
        seen = {pod.name: pod for pod in cached}
        for name, (_, at) in list(self._created.items()):
            if name in seen or now - at > self.ttl:
                del self._created[name]
        for name, at in list(self._deleted.items()):
            pod = seen.get(name)
            if pod is None or pod.deleting or now - at > self.ttl:
                del self._deleted[name]
        pods = [
            dataclasses.replace(pod, deleting=True) if pod.name in self._deleted else pod
            for pod in cached
        ]
        pods.extend(pod for pod, _ in self._created.values())
        return pods

    def __bool__(self) -> bool:
        return bool(self._created or self._deleted)
