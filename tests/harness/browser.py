"""A real headless browser for tests: Debian's Chromium, rendering a page to its DOM or a PNG.

Without Chromium the tests that need it are skipped, except under ``CI=true``, where they
fail (``apt-get install chromium``). ``KUBETUNE_SCREENSHOTS=DIR`` also copies the screenshots
tests take into DIR (the documentation site's images come from ``docs/images``).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.helpers import IN_CI

__all__ = ["Browser", "page_text", "publish_screenshot"]

_CANDIDATES = ("chromium", "chromium-browser")


class Browser:
    """Headless Chromium with a profile of its own under ``work_dir``."""

    def __init__(self, work_dir: Path) -> None:
        found = next((path for name in _CANDIDATES if (path := shutil.which(name))), None)
        if found is None:
            message = "Chromium is not installed (apt-get install chromium)"
            if IN_CI:
                pytest.fail(f"{message}; CI=true: a missing browser is a failure", pytrace=False)
            pytest.skip(message)
        self.executable = found
        self.work_dir = work_dir

    def _run(self, url: str, *args: str, width: int, height: int, wait_ms: int) -> str:
        command = [
            self.executable,
            "--headless",
            # As root (CI) Chromium refuses its sandbox; the pages are the tests' own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={self.work_dir / 'chromium-profile'}",
            f"--window-size={width},{height}",
            # Virtual time runs the page's scripts and requests until it is idle or the budget
            # is spent, so a page that renders late is rendered before the DOM is taken.
            f"--virtual-time-budget={wait_ms}",
            *args,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise AssertionError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def dom(self, url: str, *, width: int = 1400, height: int = 1000, wait_ms: int = 15000) -> str:
        """The page's DOM after its scripts ran (``--dump-dom``)."""
        return self._run(url, "--dump-dom", width=width, height=height, wait_ms=wait_ms)

    def screenshot(
        self, url: str, path: Path, *, width: int = 1400, height: int = 1000, wait_ms: int = 15000
    ) -> Path:
        """A PNG of the page's first ``width`` x ``height`` pixels."""
        self._run(url, f"--screenshot={path}", width=width, height=height, wait_ms=wait_ms)
        assert path.is_file() and path.stat().st_size > 0, f"no screenshot at {path}"
        return path


def page_text(dom: str) -> str:
    """The visible text of a DOM: scripts and styles dropped, tags to spaces."""
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def publish_screenshot(path: Path) -> None:
    """Copy a screenshot into ``$KUBETUNE_SCREENSHOTS`` when it is set."""
    target = os.environ.get("KUBETUNE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
