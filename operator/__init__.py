"""kubetune's kopf operator (imported as ``hpo_operator``; ``operator`` is a stdlib module)."""

from __future__ import annotations
