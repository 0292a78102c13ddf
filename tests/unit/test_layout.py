"""The layout rule: four packages, and who may import whom.

- ``kubetune_api`` (the HPOStudy API: contract names, spec, status, CRD) imports none of the other
  three, and no torch, kopf or Optuna;
- ``kubetune_study`` (the study as every process sees it) imports only ``kubetune_api`` of
  kubetune's packages, and no torch, kopf or Kubernetes client;
- ``hpo_operator`` (kopf, Kubernetes) never imports ``trial_runner`` nor torch;
- ``trial_runner`` (torch) never imports ``hpo_operator`` nor kopf.

Checked twice: statically over every import statement of every module (lazy imports inside
functions included), and by importing every module of a package in a fresh interpreter and
looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# package → (its folder, the top-level modules it must not import)
RULES: dict[str, tuple[str, frozenset[str]]] = {
    "kubetune_api": (
        "kubetune_api",
        frozenset({"kubetune_study", "hpo_operator", "trial_runner", "torch", "kopf", "optuna"}),
    ),
    "kubetune_study": (
        "kubetune_study",
        frozenset({"hpo_operator", "trial_runner", "torch", "kopf", "kubernetes"}),
    ),
    "hpo_operator": ("operator", frozenset({"trial_runner", "torch"})),
    "trial_runner": ("trial_runner", frozenset({"hpo_operator", "kopf"})),
}


def imported_roots(source: str) -> set[str]:
    """The top-level module of every import statement in ``source`` (relative ones excluded)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_lazy_and_nested_imports() -> None:
    source = "import a.b\nfrom c.d import e\ndef f():\n    import g\n    from . import h\n"
    assert imported_roots(source) == {"a", "c", "g"}


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_module_imports_what_its_package_must_not(package: str) -> None:
    folder, forbidden = RULES[package]
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"no modules under {folder}/"
    broken = {
        str(path.relative_to(REPO)): sorted(imported_roots(path.read_text()) & forbidden)
        for path in files
    }
    assert {path: roots for path, roots in broken.items() if roots} == {}


_LOADED = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("package", sorted(RULES))
def test_importing_every_module_loads_nothing_forbidden(package: str) -> None:
    _, forbidden = RULES[package]
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, package],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    loaded = set(json.loads(result.stdout))
    assert package in loaded
    assert sorted(loaded & forbidden) == []
