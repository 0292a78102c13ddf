#!/usr/bin/env bash
# The one command that runs kubetune's whole test suite on a fresh machine:
#   bash hack/test.sh [pytest args...]
# It installs what the suite needs (PostgreSQL, buildah, mmdebstrap, containerd, runc and the CNI
# plugins from Debian's packages, a Python virtualenv with the pinned dependencies, the control
# plane and the real node's kubelet built from upstream Go modules, the kubetune image built from
# the Dockerfile), then runs ruff, mypy (strict on the four packages) and pytest.
# Slow things are cached under ${KUBETUNE_CACHE:-~/.cache/kubetune}, keyed by what they are
# built from.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
mkdir -p "$cache"
step() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

step "System packages: PostgreSQL, the image build's and real node's (buildah, containerd, ...), Chromium"
# The suite starts its own throwaway PostgreSQL servers and its own containerd; nothing here is
# started as a service.
packages=(postgresql buildah mmdebstrap containerd runc containernetworking-plugins iptables
  conntrack chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
  # The distribution's PostgreSQL cluster is not needed.
  as_root sh -c 'command -v pg_ctlcluster >/dev/null && pg_ctlcluster --force "$(ls /etc/postgresql)" main stop' || true
fi
ls -d /usr/lib/postgresql/*/bin/pg_ctl >&2

step "Python environment"
python="${PYTHON:-python3}"
py="$("$python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"
# Keyed by what is installed (dependencies, extras, build system), not by the rest of the file.
deps="$("$python" -c 'import json, tomllib
with open("pyproject.toml", "rb") as f:
    t = tomllib.load(f)
p = t["project"]
print(json.dumps([t["build-system"], p["dependencies"], p.get("optional-dependencies")]))')"
key="${py}-$(echo "$deps" | sha256sum | cut -c1-12)"
# The dependencies live in one cached virtualenv per dependency set; each checkout gets a small
# overlay environment of its own that sees those packages and installs only this checkout
# (editable), so two checkouts can run the suite at the same time.
venv="$cache/venv-$key"
export PIP_CACHE_DIR="$cache/pip"
exec 8>"$cache/.venv.lock"
flock 8
if [[ ! -f "$venv/.complete" ]]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[dev]"
  "$venv/bin/pip" uninstall -q -y kubetune
fi
touch "$venv/.complete"
# Environments of other dependency sets go once no checkout has used them for 6 hours (another
# checkout may still be testing an older branch); pip's cache goes when it outgrows 10 GB.
find "$cache" -maxdepth 2 -path "$cache/venv-*/.complete" -mmin +360 -printf '%h\n' |
  while read -r old; do [[ "$old" == "$venv" ]] || rm -rf "$old"; done
if [[ -d "$PIP_CACHE_DIR" ]] && (($(du -sm "$PIP_CACHE_DIR" | cut -f1) > 10240)); then
  rm -rf "$PIP_CACHE_DIR"
fi
flock -u 8
overlay="$repo/.kubetune/test-env"
if [[ "$(cat "$overlay/.base" 2>/dev/null)" != "$venv" ]]; then
  rm -rf "$overlay"
  "$python" -m venv "$overlay"
  # A path line in a .pth file adds the directory without running its own .pth files, so the
  # cached environment's packages are seen and no other checkout's install is.
  echo "$venv/lib/$py/site-packages" >"$overlay/lib/$py/site-packages/zz-kubetune-deps.pth"
  # The editable install below builds without isolation (no index needed on later runs).
  "$overlay/bin/pip" install -q "setuptools>=69" wheel
  echo "$venv" >"$overlay/.base"
fi
# pip as a script: `python -m` here would import operator/ in place of the standard library.
"$overlay/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 |
  grep -v "^\s*$" >&2 || true
export PATH="$overlay/bin:$venv/bin:$PATH"
echo "$overlay (dependencies: $venv)" >&2

step "Control plane from upstream Go modules, and the kubetune image (cached after the first build)"
# The image build mostly downloads and unpacks while the Go build compiles: run them side by side.
image_log="$(mktemp "${TMPDIR:-/tmp}/kubetune-image.XXXXXX")"
bash hack/image/build.sh --print >"$image_log.out" 2>"$image_log" &
image_pid=$!
KUBETUNE_CONTROL_PLANE_BIN="$(bash hack/control-plane/build.sh --print-bin-dir)"
export KUBETUNE_CONTROL_PLANE_BIN
echo "$KUBETUNE_CONTROL_PLANE_BIN" >&2
if wait "$image_pid"; then
  grep '^\[image' "$image_log" >&2 || true
  KUBETUNE_TEST_IMAGES="$(cat "$image_log.out")"
  export KUBETUNE_TEST_IMAGES
  echo "$KUBETUNE_TEST_IMAGES" >&2
else
  tail -n 40 "$image_log" >&2
  echo "the image build failed (above); the real-node tests will fail" >&2
fi
rm -f "$image_log" "$image_log.out"

step "ruff"
python -m ruff check .
python -m ruff format --check .

step "mypy"
# mypy cannot follow setuptools' editable import hook, so it is shown the package mapping
# (operator/ is imported as hpo_operator) through a path of its own.
mypy_path="$(mktemp -d)"
ln -s "$repo/operator" "$mypy_path/hpo_operator"
for package in kubetune_api kubetune_study trial_runner; do
  ln -s "$repo/$package" "$mypy_path/$package"
done
MYPYPATH="$mypy_path" python -m mypy --strict -p kubetune_api -p kubetune_study -p hpo_operator \
  -p trial_runner
rm -rf "$mypy_path"

step "pytest"
# A base temp of its own: pytest prunes old directories under the shared default, which would
# pull the data directory from under another session's PostgreSQL.
basetemp="$(mktemp -d "${TMPDIR:-/tmp}/kubetune-tests.XXXXXX")"
export KUBETUNE_SCREENSHOTS="${KUBETUNE_SCREENSHOTS:-$repo/docs/images}" # the docs' pictures
status=0
python -m pytest -p no:cacheprovider -ra --basetemp "$basetemp" "$@" || status=$?
rm -rf "$basetemp" || true
exit "$status"
