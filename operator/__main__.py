"""``python -m hpo_operator [kopf run options]``: run the operator (same as ``kopf run``).

Examples::

    python -m hpo_operator --all-namespaces
    python -m hpo_operator --namespace team-a --namespace team-b

With ``KUBETUNE_LEADER_ELECTION_LEASE=namespace/name`` (the chart sets it), the process first
waits until it holds that Lease (:mod:`hpo_operator.leader`), so that of several replicas only
one acts; it hands the Lease back when it stops.
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from typing import TYPE_CHECKING

from kopf import cli

if TYPE_CHECKING:
    from hpo_operator.leader import Leadership

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Start kopf with the kubetune handlers and the given ``kopf run`` options."""
    args = sys.argv[1:] if argv is None else argv
    leadership = _lead(args)
    try:
        cli.main(
            args=["run", "-m", "hpo_operator.handlers", *args], prog_name="python -m hpo_operator"
        )
    finally:
        if leadership is not None:
            leadership.release()


def _lead(args: list[str]) -> Leadership | None:
    """Campaign for the Lease when one is configured; the won :class:`Leadership`, or None."""
    from hpo_operator._cluster import api_client
    from hpo_operator.config import OperatorConfig
    from hpo_operator.leader import campaign

    config = OperatorConfig.from_env()
    if config.leader_lease is None:
        return None
    # Until kopf sets up logging (it keeps other handlers, so this one goes before it starts).
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        # Imported while waiting, so that a replica that takes over starts at once.
        import hpo_operator.handlers  # noqa: F401

        namespace, name = config.leader_lease
        return campaign(
            api_client(),
            namespace,
            name,
            lease_seconds=config.lease_duration_seconds,
            liveness_port=_liveness_port(args),
        )
    finally:
        root.removeHandler(handler)


def _liveness_port(args: list[str]) -> int | None:
    """The port of kopf's ``--liveness=http://host:port/path`` option, if given."""
    for index, arg in enumerate(args):
        value = None
        if arg.startswith("--liveness="):
            value = arg.split("=", 1)[1]
        elif arg == "--liveness" and index + 1 < len(args):
            value = args[index + 1]
        if value:
            return urllib.parse.urlsplit(value).port or 80
    return None


if __name__ == "__main__":
    main()
