"""The documentation site builds, strictly and offline, and its generated references are whole.

``mkdocs build --strict`` (configured in ``mkdocs.yml``) fails on a broken link or anchor, a page
missing from the navigation, or a nav entry without its page; the HPOStudy and CLI references
are generated at build time (``hack/docs/``), so they are checked here against the spec model
and the command's parser, computed independently of the generator.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kubetune_api.spec import HPOStudy
from kubetune_api.status import StudyStatus

REPO = Path(__file__).resolve().parents[2]
GENERATORS = REPO / "hack" / "docs"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` in a subprocess, with no network needed (and none used)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _load_generator(name: str) -> types.ModuleType:
    path = GENERATORS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kubetune_docs_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = _build(REPO / "mkdocs.yml", site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return site


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The models an annotation holds, and whether as a list's items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
        return
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        for model, listed in _models_in(arg):
            yield model, listed or origin is list


def leaf_paths(model: type[BaseModel], prefix: str) -> set[str]:
    """Every field path below ``model`` that holds plain values, as users write it."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        models = list(_models_in(field.annotation))
        if not models:
            paths.add(path)
        for child, listed in models:
            paths |= leaf_paths(child, path + ("[]" if listed else ""))
    return paths


def test_the_site_builds_strictly(site: Path) -> None:
    for page in ["index", "reference/hpostudy", "reference/cli", "reference/task-api"]:
        assert (site / f"{page}.html").is_file(), page
    assert (site / "images" / "report.png").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for host in ("fonts.googleapis.com", "fonts.gstatic.com", "cdn.jsdelivr.net", "unpkg.com"):
            assert host not in text, f"{page.relative_to(site)} loads {host}"


def test_the_hpostudy_reference_lists_every_field(site: Path) -> None:
    markdown = _load_generator("spec_reference").reference_markdown()
    page = (site / "reference" / "hpostudy.html").read_text(encoding="utf-8")
    fields = leaf_paths(HPOStudy, "") | leaf_paths(StudyStatus, "status")
    assert "spec.searchSpace[].low" in fields and "spec.budget.maxTrials" in fields
    missing = sorted(path for path in fields if f"`{path}`" not in markdown)
    assert not missing, f"fields missing from the HPOStudy reference: {missing}"
    missing_html = sorted(path for path in fields if f"<code>{path}</code>" not in page)
    assert not missing_html, f"fields missing from the built page: {missing_html}"


def test_the_cli_reference_lists_every_subcommand_and_flag(site: Path) -> None:
    from trial_runner.cli import build_parser

    parser = build_parser()
    markdown = _load_generator("cli_reference").reference_markdown(parser)
    page = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    commands = {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }
    assert {"run", "runner", "results", "report", "validate", "estimate"} <= set(commands)
    for name, sub in commands.items():
        assert f"## `kubetune {name}`" in markdown, name
        assert f"<code>kubetune {name}</code>" in page, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in markdown, f"kubetune {name} {flag}"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """Strict mode is on: the same configuration over a page with a bad link fails."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    with (docs / "guide" / "local.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(REPO / path) for path in config["hooks"]]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no-such-page.md" in result.stdout + result.stderr
