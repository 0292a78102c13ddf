"""What the end-to-end tests need before anything starts, found or reported as missing: the
control-plane binaries and the images built from this checkout.

Each lookup returns what it found or ends the test through :func:`tests.harness.helpers.
unavailable`: skipped on a developer's machine, failed under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.controlplane import BUILD_SCRIPT, find_bin_dir, missing_binaries
from tests.harness.helpers import REPO_ROOT, unavailable

__all__ = [
    "BUILD_HINT",
    "IMAGE_SCRIPT",
    "BuiltImages",
    "built_images",
    "cache_root",
    "control_plane_bin_dir",
]

BUILD_HINT = (
    f"build them with `bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}` (the first build takes about "
    "20 minutes on 2 cores; see hack/control-plane/README.md)"
)
IMAGE_SCRIPT = REPO_ROOT / "hack" / "image" / "build.sh"


def control_plane_bin_dir() -> Path:
    """The directory with etcd, kube-*, kwok and helm (``KUBETUNE_CONTROL_PLANE_BIN`` or the
    build cache of ``hack/control-plane/build.sh``)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable(f"the control-plane binaries are not built; {BUILD_HINT}")
    missing = missing_binaries(bin_dir)
    if missing:
        unavailable(f"{bin_dir} lacks {', '.join(missing)}; {BUILD_HINT}")
    return bin_dir


@dataclass(frozen=True)
class BuiltImages:
    """The images a real node runs: kubetune (this checkout) and the sandbox's pause."""

    image: str
    archive: Path
    pause_image: str
    pause_archive: Path


def cache_root() -> Path:
    """``$KUBETUNE_CACHE``, else ``$XDG_CACHE_HOME/kubetune`` or ``~/.cache/kubetune``."""
    explicit = os.environ.get("KUBETUNE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubetune"


def built_images() -> BuiltImages:
    """``$KUBETUNE_TEST_IMAGES`` (``hack/test.sh`` sets it after building), else the build cache
    of this checkout (``hack/image/build.sh --check``)."""
    printed = os.environ.get("KUBETUNE_TEST_IMAGES", "")
    if not printed:
        check = subprocess.run(["bash", str(IMAGE_SCRIPT), "--check"], capture_output=True)
        if check.returncode == 0:
            printed = subprocess.run(
                ["bash", str(IMAGE_SCRIPT), "--print"], capture_output=True, text=True
            ).stdout
    fields = printed.split()
    if len(fields) != 4:
        unavailable(
            f"the kubetune image of this checkout is not built; run `bash "
            f"{IMAGE_SCRIPT.relative_to(REPO_ROOT)}` (10-20 minutes the first time)"
        )
    images = BuiltImages(fields[0], Path(fields[1]), fields[2], Path(fields[3]))
    for archive in (images.archive, images.pause_archive):
        if not archive.is_file():
            unavailable(f"{archive} is missing; run `bash {IMAGE_SCRIPT.relative_to(REPO_ROOT)}`")
    return images
