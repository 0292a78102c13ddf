"""``python -m kubetune_api.crd``: print the CRD (see :mod:`kubetune_api.crd`)."""

from __future__ import annotations

from kubetune_api.crd import main

main()
