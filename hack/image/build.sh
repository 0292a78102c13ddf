#!/usr/bin/env bash
# Build the kubetune image from the project's Dockerfile without a registry or a container
# engine, and export it as an OCI archive a containerd can import.
#
#   1. Python base: a Debian bookworm root filesystem with python3, made by mmdebstrap from
#      Debian's packages (no registry needed). Cached by its recipe.
#   2. The image: the project's real Dockerfile, built by buildah (daemonless, chroot
#      isolation) FROM that base, with VARIANT=cpu and torch from PyPI (CPU_TORCH_INDEX empty).
#      Cached by the hash of what it is built from: the Dockerfile, pyproject.toml,
#      .dockerignore and the base.
#   3. The test image: this checkout's operator/ and trial_runner/ laid over the cached image as
#      one thin layer (the installed packages are replaced, bytecode compiled), so a source
#      change costs seconds, not a rebuild.
#   4. The pause image of the real test node: hack/node/pause compiled into a static binary,
#      alone in an image.
#   5. With --user-image DIR: a user's own image, DIR/Dockerfile built FROM the test image (its
#      build argument KUBETUNE_IMAGE), as a team builds its runner image FROM kubetune's.
#      Cached by the test image and DIR's files.
#
# Usage:
#   hack/image/build.sh            build what is missing; progress on stderr
#   hack/image/build.sh --print    the same, then print `IMAGE ARCHIVE PAUSE_IMAGE PAUSE_ARCHIVE`
#   hack/image/build.sh --check    exit 0 if both images of this checkout are cached
#   hack/image/build.sh --user-image DIR
#                                  build the above if missing, then DIR's image; print
#                                  `IMAGE ARCHIVE` of DIR's image
#
# Environment:
#   KUBETUNE_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kubetune)
#   BUILD_NICE       niceness of the build (default 10)
#   DEBIAN_MIRROR    Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
#
# Needs root (mmdebstrap and buildah's chroot isolation), mmdebstrap and buildah (Debian
# packages), and Go for the pause binary. Registry traffic inside the build goes through the host's CA bundle and pip
# settings, mounted read-only while RUN steps execute and never copied into the image.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mode=build
user_dir=""
case "${1:-}" in
  "") ;;
  --print) mode=print ;;
  --check) mode=check ;;
  --user-image)
    mode=user
    [[ -f "${2:-}/Dockerfile" ]] || {
      echo "image/build.sh: --user-image DIR needs DIR/Dockerfile (got '${2:-}')" >&2
      exit 2
    }
    user_dir="$(cd "$2" && pwd)"
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "image/build.sh: unknown argument '$1' (accepted: --print, --check, --help)" >&2
    exit 2
    ;;
esac

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

cache_root="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubetune}"
root="${cache_root}/image"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
nice_level="${BUILD_NICE:-10}"
variant=cpu

# Bump when the way an artefact is made changes.
base_recipe="bookworm minbase python3,python3-venv,python-is-python3,ca-certificates r1"
image_recipe="r1"
thin_recipe="r1"
user_recipe="r1"

hash_of() { sha256sum | cut -c1-16; }
base_key="$(echo "${base_recipe} ${mirror}" | hash_of)"
image_key="$(
  cd "${repo}"
  {
    echo "${image_recipe} ${variant} ${base_key}"
    cat Dockerfile pyproject.toml .dockerignore
  } | hash_of
)"
# The checkout's sources as they are now (tracked or not), not as committed.
source_key="$(
  cd "${repo}"
  {
    echo "${thin_recipe} ${image_key}"
    find kubetune_api kubetune_study operator trial_runner -type f \( -name '*.py' -o -name 'py.typed' \) -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
  } | hash_of
)"

base_tar="${root}/python-base-${base_key}.tar"
base_image="localhost/kubetune-python:${base_key}"
built_image="localhost/kubetune:built-${image_key}"
test_image="localhost/kubetune:test-${source_key}"
archive="${root}/kubetune-test-${source_key}.oci.tar"

pause_key="$(cat "${repo}"/hack/node/pause/* | hash_of)"
pause_bin="${root}/pause-${pause_key}.bin"
pause_image="localhost/kubetune-pause:${pause_key}"
pause_archive="${root}/pause-${pause_key}.oci.tar"
result="${test_image} ${archive} ${pause_image} ${pause_archive}"

if [[ "${mode}" == check ]]; then
  [[ -f "${archive}" && -f "${pause_archive}" ]] && exit 0
  exit 1
fi
if [[ "${mode}" == user ]]; then
  user_name="$(basename "${user_dir}" | tr -c 'a-z0-9\n-' '-')"
  user_key="$(
    cd "${user_dir}"
    {
      echo "${user_recipe} ${source_key}"
      find . -type f -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | hash_of
  )"
  user_image="localhost/${user_name}:test-${user_key}"
  user_archive="${root}/user-${user_name}-${user_key}.oci.tar"
fi
if [[ "${mode}" == user && -f "${user_archive}" ]]; then
  log "cached: ${user_image} (${user_archive})"
  touch "${user_archive}"
  echo "${user_image} ${user_archive}"
  exit 0
fi
if [[ "${mode}" != user && -f "${archive}" && -f "${pause_archive}" ]]; then
  log "cached: ${test_image} (${archive}), ${pause_image}"
  touch "${archive}" "${pause_archive}" # used: kept by the pruning below
  [[ "${mode}" == print ]] && echo "${result}"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "needs root (mmdebstrap and buildah's chroot isolation)"
for tool in mmdebstrap buildah; do
  command -v "${tool}" >/dev/null || die "${tool} is not installed (apt-get install ${tool})"
done

mkdir -p "${root}/tmp"
exec 9>"${root}/.lock"
if ! flock -n 9; then
  log "another image build is running; waiting for it"
  flock 9
fi

# buildah's storage and temporary files stay inside the cache directory.
export TMPDIR="${root}/tmp"
storage=(--root "${root}/storage" --runroot "${root}/run" --storage-driver overlay)
policy="${root}/policy.json"
echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"${policy}"
bah() { nice -n "${nice_level}" buildah "${storage[@]}" "$@"; }
has_image() { bah inspect --type image "$1" >/dev/null 2>&1; }
started=${SECONDS}

if ! has_image "${base_image}"; then
  if [[ ! -f "${base_tar}" ]]; then
    log "python base: mmdebstrap bookworm from ${mirror} (about a minute)"
    nice -n "${nice_level}" mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
      --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "${base_tar}.tmp" "${mirror}"
    mv "${base_tar}.tmp" "${base_tar}"
  fi
  log "python base: importing into buildah as ${base_image}"
  container="$(bah from --signature-policy "${policy}" scratch)"
  bah add "${container}" "${base_tar}" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /usr/bin/python3 "${container}"
  bah commit --signature-policy "${policy}" --quiet --rm "${container}" "${base_image}" \
    >/dev/null
fi

if ! has_image "${built_image}"; then
  log "image: buildah bud of Dockerfile (VARIANT=${variant}, torch from PyPI;" \
    "10-20 minutes the first time)"
  # Registry traffic passes a TLS proxy whose CA only the host trusts: its bundle (and pip's
  # settings, which point at it) are mounted read-only for the RUN steps, never copied in.
  mounts=()
  for file in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f "${file}" ]] && mounts+=(--volume "${file}:${file}:ro")
  done
  bah bud --signature-policy "${policy}" --isolation chroot --layers=false \
    --build-arg "PYTHON_IMAGE=${base_image}" --build-arg "VARIANT=${variant}" \
    --build-arg CPU_TORCH_INDEX= "${mounts[@]}" \
    --file "${repo}/Dockerfile" --tag "${built_image}" "${repo}" >&2
  log "image: built in $((SECONDS - started))s"
fi

if [[ ! -f "${archive}" ]] || ! has_image "${test_image}"; then
  log "test image: this checkout's sources over ${built_image}"
  container="$(bah from --signature-policy "${policy}" --pull=never "${built_image}")"
  # The image's user is 65532; the layer is written as root.
  site="$(bah run --isolation chroot --user 0:0 "${container}" -- /opt/venv/bin/python -c \
    'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  bah run --isolation chroot --user 0:0 "${container}" -- \
    rm -rf "${site}/kubetune_api" "${site}/kubetune_study" "${site}/hpo_operator" \
    "${site}/trial_runner"
  staging="$(mktemp -d "${TMPDIR}/sources.XXXXXX")"
  (cd "${repo}" && find kubetune_api kubetune_study operator trial_runner -type f \
    \( -name '*.py' -o -name 'py.typed' \) -print0 | tar --null -T - -cf -) | tar -C "${staging}" -xf -
  mv "${staging}/operator" "${staging}/hpo_operator"
  bah copy "${container}" "${staging}/hpo_operator" "${site}/hpo_operator" >/dev/null
  for package in kubetune_api kubetune_study trial_runner; do
    bah copy "${container}" "${staging}/${package}" "${site}/${package}" >/dev/null
  done
  rm -rf "${staging}"
  bah run --isolation chroot --user 0:0 "${container}" -- /opt/venv/bin/python -m compileall -q \
    "${site}/kubetune_api" "${site}/kubetune_study" "${site}/hpo_operator" "${site}/trial_runner"
  bah run --isolation chroot "${container}" -- /opt/venv/bin/kubetune --help >/dev/null
  bah config --label "dev.kubetune.source=${source_key}" "${container}"
  bah commit --signature-policy "${policy}" --quiet --rm "${container}" "${test_image}" >/dev/null

  log "test image: exporting ${archive}"
  rm -f "${archive}.tmp"
  bah push --signature-policy "${policy}" --quiet --disable-compression --format oci \
    "${test_image}" "oci-archive:${archive}.tmp:${test_image}"
  mv "${archive}.tmp" "${archive}"
fi

if [[ ! -f "${pause_archive}" ]]; then
  log "pause image: ${pause_image} (hack/node/pause, a static Go binary)"
  command -v go >/dev/null || die "go is not on PATH; it compiles the pause binary"
  (cd "${repo}/hack/node/pause" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath \
    go build -ldflags="-s -w" -o "${pause_bin}" .)
  container="$(bah from --signature-policy "${policy}" scratch)"
  bah copy "${container}" "${pause_bin}" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --user 65535:65535 "${container}"
  bah commit --signature-policy "${policy}" --quiet --rm "${container}" "${pause_image}" >/dev/null
  bah push --signature-policy "${policy}" --quiet --disable-compression --format oci \
    "${pause_image}" "oci-archive:${pause_archive}.tmp:${pause_image}"
  mv "${pause_archive}.tmp" "${pause_archive}"
  rm -f "${pause_bin}"
fi

if [[ "${mode}" == user ]]; then
  log "user image: ${user_dir}/Dockerfile FROM ${test_image}"
  bah bud --signature-policy "${policy}" --isolation chroot --layers=false --pull=never \
    --build-arg "KUBETUNE_IMAGE=${test_image}" --file "${user_dir}/Dockerfile" \
    --tag "${user_image}" "${user_dir}" >&2
  rm -f "${user_archive}.tmp"
  bah push --signature-policy "${policy}" --quiet --disable-compression --format oci \
    "${user_image}" "oci-archive:${user_archive}.tmp:${user_image}"
  mv "${user_archive}.tmp" "${user_archive}"
  bah rmi --force "${user_image}" >/dev/null || true
  # A user image is as large as the test image it is built on: keep the newest two.
  mapfile -t users < <(ls -t "${root}"/user-*.oci.tar 2>/dev/null)
  for ((i = 2; i < ${#users[@]}; i++)); do
    log "pruning ${users[i]}"
    rm -f "${users[i]}"
  done
  log "user image: done in $((SECONDS - started))s, $(du -h "${user_archive}" | cut -f1) archive"
  echo "${user_image} ${user_archive}"
  exit 0
fi

# Prune: other checkouts (worktrees, CI's clone) build their own keys at the same time, so an
# artefact goes once nothing has used it for 6 hours, and test archives beyond the 4 newest go
# once they are an hour old (another checkout may be about to import one), beyond the 8 newest
# at once (each is about 2.3 GB).
keep_images=("${base_image}" "${built_image}" "${test_image}" "${pause_image}")
stale() { [[ -n "$(find "$1" -maxdepth 0 -mmin +360 2>/dev/null)" ]]; }
mapfile -t archives < <(ls -t "${root}"/kubetune-test-*.oci.tar 2>/dev/null)
for ((i = 0; i < ${#archives[@]}; i++)); do
  file="${archives[i]}"
  [[ "${file}" == "${archive}" ]] && continue
  if ((i >= 8)) || { ((i >= 4)) && [[ -n "$(find "${file}" -maxdepth 0 -mmin +60)" ]]; } ||
    stale "${file}"; then
    log "pruning ${file}"
    rm -f "${file}"
  else
    name="${file##*/kubetune-test-}"
    keep_images+=("localhost/kubetune:test-${name%.oci.tar}")
  fi
done
for file in "${root}"/python-base-*.tar "${root}"/pause-*.oci.tar; do
  case "${file}" in "${base_tar}" | "${pause_archive}") continue ;; esac
  [[ -e "${file}" ]] && stale "${file}" || continue
  log "pruning ${file}"
  rm -rf "${file}"
done
while read -r name created; do
  keep=0
  for kept in "${keep_images[@]}"; do [[ "${name}" == "${kept}" ]] && keep=1; done
  # A built image another checkout still uses is younger than 6 hours.
  if ((keep == 0)) && (($(date +%s) - created > 21600)); then
    log "pruning image ${name}"
    bah rmi --force "${name}" >/dev/null || true
  elif ((keep == 0)) && [[ "${name}" == localhost/kubetune:test-* ]]; then
    bah rmi --force "${name}" >/dev/null || true
  fi
done < <(bah images --format '{{.Name}}:{{.Tag}} {{.CreatedAtRaw.Unix}}' 2>/dev/null | sort -u)
bah rm --all >/dev/null 2>&1 || true
rm -rf "${TMPDIR:?}"/*

log "done in $((SECONDS - started))s: ${test_image}, $(du -h "${archive}" | cut -f1) archive"
[[ "${mode}" == print ]] && echo "${result}"
exit 0
