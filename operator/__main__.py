"""``python -m hpo_operator [kopf run options]``: run the operator (same as ``kopf run``).

Examples::

    python -m hpo_operator --all-namespaces
    python -m hpo_operator --namespace team-a --namespace team-b
"""

from __future__ import annotations

import sys

from kopf import cli

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Start kopf with the kubetune handlers and the given ``kopf run`` options."""
    args = sys.argv[1:] if argv is None else argv
    cli.main(args=["run", "-m", "hpo_operator.handlers", *args], prog_name="python -m hpo_operator")


if __name__ == "__main__":
    main()
