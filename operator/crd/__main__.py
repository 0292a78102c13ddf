"""``python -m hpo_operator.crd``: print the CRD (see :mod:`hpo_operator.crd`)."""

from __future__ import annotations

from hpo_operator.crd import main

main()
