"""``python -m trial_runner.cli``: the ``kubetune`` command (``kubetune run`` starts its runner
processes this way)."""

from __future__ import annotations

import sys

from trial_runner.cli import main

sys.exit(main())
