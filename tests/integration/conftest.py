"""Fixtures of the tests that run real runner processes against a real storage (the processes
themselves: :mod:`tests.harness.runners`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.spec import dump_yaml


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(doc: dict[str, Any]) -> Path:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(dump_yaml(doc))
        return path

    return write
