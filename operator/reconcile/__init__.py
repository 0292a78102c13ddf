"""The reconcile pass: what it reads, the decision (pure), and what it writes.

:func:`decide` takes the validated spec, the current :class:`~kubetune_api.status.StudyStatus`,
the observed child pods (:mod:`._observe`), the study's progress (read from the Optuna
storage) and the sizing result, and returns a :class:`Plan` (:mod:`._plan`): the actions to
take, the new status and the events to emit. It does no I/O, so every state transition is
unit-tested without a cluster; a pass (:mod:`.study`) gathers the inputs (:mod:`.gather`,
:mod:`.state`) and carries the plan out (:mod:`.act`): those modules do the I/O and are
imported by name, not from this package. The pods come from a watch-fed cache;
:class:`PodExpectations` adds what the operator wrote that the cache does not show yet
(:mod:`._expect`).

The steps (:mod:`._decide`, over :mod:`._record`, :mod:`._start`, :mod:`._runners` and
:mod:`._ready`), in order:
    * storage unreadable: keep what runs, create nothing, ``Ready=False StorageUnavailable``;
    * record the progress: trial counts, the best trial (its ConfigMap when it changed) or,
      with several objectives, the Pareto front (bounded; its ConfigMap when it changed),
      stage; the warm start's report as the ``WarmStarted`` condition;
    * the study is done (budget spent, timed out or too many failed trials, nothing in
      flight): ``Succeeded`` or ``Failed``, every pod deleted, ``completionTime`` set;
    * runner pods that ended are deleted; an OOMKilled runner raises the memory floor so
      replacements get the next larger resource; a failed one counts as a failure;
    * runners that cannot start (:mod:`._start`): the reason shown at once; a pod that exited
      because its task does not load, or still shows its reason after its attempt's back-off,
      is a failed start: deleted, and runners created again after the back-off; after
      ``RunnerStartPolicy.attempts`` of them in a row with one reason, ``Failed=True`` with
      that reason and runners deleted, until the spec is edited;
    * too many runner pods failed (not OOMKilled) since the spec last changed:
      ``Failed=True RunnerFailures`` and runners deleted, until the spec is edited;
    * ``spec.suspend``: every runner deleted (their trials are released and retried later);
    * sizing: an estimate pod runs when the peak memory is unknown; nothing fits →
      ``Ready=False NoFittingResource`` and no new runners;
    * runners: indexes ``0..pods-1`` of the sizing, which lays ``parallelism`` trials at once
      onto pods; extra indexes, and pods whose processes are no longer their share, are
      deleted; missing runners are created only while the study still has trials to claim;
    * ``Ready``: why runners are not (all) ready (a start failure's reason, ``Unschedulable``,
      ``RunnersStarting`` ...), or that they are.
"""

from __future__ import annotations

from hpo_operator.reconcile._decide import decide, invalid_spec
from hpo_operator.reconcile._expect import PodExpectations
from hpo_operator.reconcile._observe import (
    ObservedPod,
    StartFailure,
    observe_pod,
    with_mount_failure,
)
from hpo_operator.reconcile._plan import (
    Action,
    CreateEstimatePod,
    CreateRunner,
    DeletePod,
    Event,
    EventReason,
    Plan,
    SizingInput,
    WriteBest,
    WriteFront,
)
from hpo_operator.reconcile._sizing import sizing_input
from hpo_operator.reconcile._storage import StorageMissing

__all__ = [
    "Action",
    "CreateEstimatePod",
    "CreateRunner",
    "DeletePod",
    "Event",
    "EventReason",
    "ObservedPod",
    "Plan",
    "PodExpectations",
    "SizingInput",
    "StartFailure",
    "StorageMissing",
    "WriteBest",
    "WriteFront",
    "decide",
    "invalid_spec",
    "observe_pod",
    "sizing_input",
    "with_mount_failure",
]
