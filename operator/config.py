"""The operator's settings, read once from its environment.

Every setting is an environment variable so the same image serves the Helm chart, a laptop
(``kopf run``) and the tests:

``KUBETUNE_RUNNER_IMAGE``
    Image of runner and estimate pods when ``spec.task.image`` is not set.
``KUBETUNE_IMAGE_PULL_POLICY``
    ``IfNotPresent`` (default), ``Always`` or ``Never``.
``KUBETUNE_RUNNER_UID``
    Numeric user (and group) the pods run as; default 65532.
``KUBETUNE_RUNNER_EXTRA_LABELS``
    ``key=value,key=value`` added to every pod the operator creates (team, cost centre,
    selectors of network policies).
``KUBETUNE_RUNNER_EXTRA_ENV``
    ``NAME=value,NAME=value`` added to every runner and estimate container.
``KUBETUNE_RUNNER_TOLERATIONS``
    ``key[=value]:Effect,...`` tolerations added to every pod (GPU pods always tolerate
    ``nvidia.com/gpu``).
``KUBETUNE_RUNNER_QUEUE_NAME``
    Kueue LocalQueue of runner pods whose study names none (``spec.resources.queueName`` or
    the HPOStudy's ``kueue.x-k8s.io/queue-name`` label); default: none, pods are not queued.
``KUBETUNE_GRACE_PERIOD``
    ``terminationGracePeriodSeconds`` of runner pods (default 60): time to finish or release
    the running trial.
``KUBETUNE_ESTIMATE_CPU`` / ``KUBETUNE_ESTIMATE_MEMORY``
    Requests and limits of the estimate pod (default ``1`` / ``4Gi``).
``KUBETUNE_DEFAULT_STORAGE_SECRET``
    ``name`` or ``name/key`` of a Secret (in the study's namespace) holding the storage URL,
    used when ``spec.storage.secretRef`` is not set.
``KUBETUNE_STORAGE_URL``
    The storage URL itself, used when neither is set: the operator stores it in a Secret
    ``<study>-storage`` owned by the study, so runner pods get it by ``secretKeyRef``.
``KUBETUNE_RECONCILE_INTERVAL``
    Seconds between two looks at a study (default 5).
``KUBETUNE_MAX_RUNNER_FAILURES``
    Failed runner pods (not OOMKilled) after which a study is Failed (default 5, plus the
    parallelism).
``KUBETUNE_RUNNER_START_ATTEMPTS``
    Runner starts that may fail in a row with the same reason (image pull, missing Secret or
    ConfigMap, volume, task that does not load) before the study is Failed with that reason
    (default 4; see :class:`RunnerStartPolicy`).
``KUBETUNE_RUNNER_START_BACKOFF``
    Seconds before runners are created again after the first failed start; doubled after each
    further one, up to 600 (default 30).
``KUBETUNE_LEADER_ELECTION_LEASE``
    ``namespace/name`` of a ``coordination.k8s.io`` Lease: ``python -m hpo_operator`` then acts
    only while it holds it, so of several replicas one is active (see
    :mod:`hpo_operator.leader`). Unset (the default outside the chart): it acts at once.
``KUBETUNE_LEASE_DURATION``
    Seconds after its holder's last renewal that a Lease may be taken over (default 15): how
    long a killed active operator is waited for.
``KUBETUNE_METRICS_PORT``
    Port of the operator's Prometheus ``/metrics`` (default: none served).
``KUBETUNE_RUNNER_METRICS_PORT``
    Port of each runner pod's ``/metrics`` (default: runners serve none). The runner pods
    get the port, ``KUBETUNE_METRICS_PORT`` and the ``prometheus.io/*`` annotations.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kubetune_api.contract import METRICS_PORT_ENV, STORAGE_ENV, STORAGE_SECRET_KEY
from kubetune_api.spec import QUEUE_NAME_PATTERN

__all__ = [
    "DEFAULT_IMAGE",
    "START_ATTEMPTS",
    "START_BACKOFF_MAX_SECONDS",
    "START_BACKOFF_SECONDS",
    "OperatorConfig",
    "RunnerStartPolicy",
    "parse_pairs",
    "reconcile_interval",
]

DEFAULT_IMAGE = "ghcr.io/kubetune/kubetune:0.1.0-cpu"

# The operator's settings (the environment variables the module docstring describes).
RUNNER_IMAGE_ENV: Final = "KUBETUNE_RUNNER_IMAGE"
IMAGE_PULL_POLICY_ENV: Final = "KUBETUNE_IMAGE_PULL_POLICY"
RUNNER_UID_ENV: Final = "KUBETUNE_RUNNER_UID"
RUNNER_EXTRA_LABELS_ENV: Final = "KUBETUNE_RUNNER_EXTRA_LABELS"
RUNNER_EXTRA_ENV_ENV: Final = "KUBETUNE_RUNNER_EXTRA_ENV"
RUNNER_TOLERATIONS_ENV: Final = "KUBETUNE_RUNNER_TOLERATIONS"
RUNNER_QUEUE_NAME_ENV: Final = "KUBETUNE_RUNNER_QUEUE_NAME"
GRACE_PERIOD_ENV: Final = "KUBETUNE_GRACE_PERIOD"
ESTIMATE_CPU_ENV: Final = "KUBETUNE_ESTIMATE_CPU"
ESTIMATE_MEMORY_ENV: Final = "KUBETUNE_ESTIMATE_MEMORY"
DEFAULT_STORAGE_SECRET_ENV: Final = "KUBETUNE_DEFAULT_STORAGE_SECRET"
RECONCILE_INTERVAL_ENV: Final = "KUBETUNE_RECONCILE_INTERVAL"
MAX_RUNNER_FAILURES_ENV: Final = "KUBETUNE_MAX_RUNNER_FAILURES"
RUNNER_START_ATTEMPTS_ENV: Final = "KUBETUNE_RUNNER_START_ATTEMPTS"
RUNNER_START_BACKOFF_ENV: Final = "KUBETUNE_RUNNER_START_BACKOFF"
LEADER_ELECTION_LEASE_ENV: Final = "KUBETUNE_LEADER_ELECTION_LEASE"
LEASE_DURATION_ENV: Final = "KUBETUNE_LEASE_DURATION"
RUNNER_METRICS_PORT_ENV: Final = "KUBETUNE_RUNNER_METRICS_PORT"
# The operator's own metrics port and its storage URL have the names the runners read:
# kubetune_api.contract.METRICS_PORT_ENV and STORAGE_ENV.


def reconcile_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between two looks at a study (``KUBETUNE_RECONCILE_INTERVAL``, default 5)."""
    return float((os.environ if env is None else env).get(RECONCILE_INTERVAL_ENV, "5"))


#: Runner starts that may fail in a row with the same reason before the study is Failed.
START_ATTEMPTS: Final = 4
#: Seconds before runners are created again after the first failed start (then doubled).
START_BACKOFF_SECONDS: Final = 30.0
#: The longest wait between two runner starts.
START_BACKOFF_MAX_SECONDS: Final = 600.0


@dataclass(frozen=True)
class RunnerStartPolicy:
    """How often runners that cannot start are tried again before the study is Failed.

    A runner start fails when its pod exits because the task does not load, or when its pod
    shows why it cannot start (image pull, missing Secret or ConfigMap, volume, missing claim)
    and is still not running :meth:`backoff` seconds after it was created: the kubelet retries
    by itself meanwhile, so a Secret created a minute later or a pull that failed once costs
    nothing. Such a pod is deleted, and runners are created again only ``backoff`` seconds
    later. After ``attempts`` failed starts in a row with the same reason the study is Failed
    with it. One wave of runners created together counts once; the count starts over when a
    trial runs or finishes (a runner got going) and when the spec changes.
    """

    attempts: int = START_ATTEMPTS
    backoff_seconds: float = START_BACKOFF_SECONDS
    max_backoff_seconds: float = START_BACKOFF_MAX_SECONDS

    def backoff(self, failed: int) -> float:
        """Seconds to wait after ``failed`` starts failed in a row (and that a pod showing a
        start failure is given when it is attempt ``failed + 1``)."""
        return min(self.backoff_seconds * 2.0 ** max(failed - 1, 0), self.max_backoff_seconds)


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``"a=1,b=2"`` → ``{"a": "1", "b": "2"}``; ``what`` names the setting in errors."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected key=value[,key=value...], got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{name}: expected a port number (1-65535), got {raw!r}")
    return int(raw)


def _tolerations(text: str) -> tuple[dict[str, str], ...]:
    out: list[dict[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        head, _, effect = item.partition(":")
        key, sep, value = head.partition("=")
        toleration = {"key": key, "operator": "Equal" if sep else "Exists"}
        if sep:
            toleration["value"] = value
        if effect:
            toleration["effect"] = effect
        out.append(toleration)
    return tuple(out)


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process (see the module docstring)."""

    runner_image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 65532
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()
    queue_name: str | None = None
    grace_period_seconds: int = 60
    estimate_cpu: str = "1"
    estimate_memory: str = "4Gi"
    default_storage_secret: tuple[str, str] | None = None
    default_storage_url: str | None = None
    reconcile_interval: float = 5.0
    max_runner_failures: int = 5
    runner_start: RunnerStartPolicy = field(default_factory=RunnerStartPolicy)
    leader_lease: tuple[str, str] | None = None
    lease_duration_seconds: int = 15
    metrics_port: int | None = None
    runner_metrics_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read the settings; a malformed value raises ``ValueError`` naming the variable."""
        env = os.environ if env is None else env
        secret = _default_secret(env.get(DEFAULT_STORAGE_SECRET_ENV, ""))
        lease = _lease(env.get(LEADER_ELECTION_LEASE_ENV, ""))
        policy = _pull_policy(env.get(IMAGE_PULL_POLICY_ENV, "IfNotPresent"))
        try:
            return cls(
                runner_image=env.get(RUNNER_IMAGE_ENV) or DEFAULT_IMAGE,
                image_pull_policy=policy,
                run_as_user=int(env.get(RUNNER_UID_ENV, "65532")),
                extra_labels=_pairs(env, RUNNER_EXTRA_LABELS_ENV),
                extra_env=_pairs(env, RUNNER_EXTRA_ENV_ENV),
                tolerations=_tolerations(env.get(RUNNER_TOLERATIONS_ENV, "")),
                queue_name=_queue_name(env.get(RUNNER_QUEUE_NAME_ENV, "")),
                grace_period_seconds=int(env.get(GRACE_PERIOD_ENV, "60")),
                estimate_cpu=env.get(ESTIMATE_CPU_ENV, "1"),
                estimate_memory=env.get(ESTIMATE_MEMORY_ENV, "4Gi"),
                default_storage_secret=secret,
                default_storage_url=env.get(STORAGE_ENV) or None,
                reconcile_interval=reconcile_interval(env),
                max_runner_failures=int(env.get(MAX_RUNNER_FAILURES_ENV, "5")),
                runner_start=_start_policy(env),
                leader_lease=lease,
                lease_duration_seconds=int(env.get(LEASE_DURATION_ENV, "15")),
                metrics_port=_port(env, METRICS_PORT_ENV),
                runner_metrics_port=_port(env, RUNNER_METRICS_PORT_ENV),
            )
        except ValueError as exc:
            raise ValueError(f"operator settings: {exc}") from None


def _pairs(env: Mapping[str, str], name: str) -> dict[str, str]:
    return parse_pairs(env.get(name, ""), name)


def _pull_policy(policy: str) -> str:
    if policy not in ("IfNotPresent", "Always", "Never"):
        raise ValueError(
            f"{IMAGE_PULL_POLICY_ENV}: expected IfNotPresent, Always or Never, got {policy!r}"
        )
    return policy


def _default_secret(text: str) -> tuple[str, str] | None:
    """``name`` or ``name/key`` (the key defaults to the storage Secret's)."""
    if not text:
        return None
    name, _, key = text.partition("/")
    return (name, key or STORAGE_SECRET_KEY)


def _lease(text: str) -> tuple[str, str] | None:
    if not text:
        return None
    namespace, _, name = text.partition("/")
    if not namespace or not name:
        raise ValueError(f"{LEADER_ELECTION_LEASE_ENV}: expected namespace/name, got {text!r}")
    return (namespace, name)


def _start_policy(env: Mapping[str, str]) -> RunnerStartPolicy:
    attempts = int(env.get(RUNNER_START_ATTEMPTS_ENV, str(START_ATTEMPTS)))
    if attempts < 1:
        raise ValueError(f"{RUNNER_START_ATTEMPTS_ENV}: expected 1 or more, got {attempts}")
    backoff = float(env.get(RUNNER_START_BACKOFF_ENV, str(START_BACKOFF_SECONDS)))
    # Whole seconds at least: a wave of runners is told from the last by creation times,
    # which the API server keeps in whole seconds.
    if backoff < 1:
        raise ValueError(f"{RUNNER_START_BACKOFF_ENV}: expected 1 or more seconds, got {backoff}")
    return RunnerStartPolicy(attempts, backoff, max(backoff, START_BACKOFF_MAX_SECONDS))


def _queue_name(text: str) -> str | None:
    """A Kueue LocalQueue name (a DNS-1123 name that is also a label value), or ``None``."""
    if not text:
        return None
    if len(text) > 63 or not re.match(QUEUE_NAME_PATTERN, text):
        raise ValueError(
            f"{RUNNER_QUEUE_NAME_ENV}: expected a LocalQueue name (lower-case letters, "
            f"digits, '-' and '.', at most 63 characters), got {text!r}"
        )
    return text
