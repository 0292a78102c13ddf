#!/usr/bin/env bash
# Build the control plane the e2e tests run (kube-apiserver, kube-scheduler,
# kube-controller-manager, etcd, kwok, helm) from upstream Go modules at the versions pinned in
# hack/control-plane/go/*/go.mod, into a cache directory keyed by those versions. A complete
# cache is reused as is.
#
# Usage:
#   hack/control-plane/build.sh                  build what is missing, print progress to stderr
#   hack/control-plane/build.sh --print-bin-dir  the same, then print only the bin dir on stdout
#   hack/control-plane/build.sh --check          exit 0 if the cache is complete, 1 if not; no build
#
# Environment:
#   KUBETUNE_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kubetune)
#   BUILD_NICE       niceness of the compiler (default 10; the build takes tens of minutes)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
modules="${here}/go"
# Bump when the way the binaries are built changes (flags, layout), to invalidate old caches.
recipe=1

mode=build
case "${1:-}" in
  "") ;;
  --print-bin-dir) mode=print ;;
  --check) mode=check ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "build.sh: unknown argument '$1' (accepted: --print-bin-dir, --check, --help)" >&2
    exit 2
    ;;
esac

log() { printf '[control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

command -v go >/dev/null || die "go is not on PATH; install Go >= 1.26 (https://go.dev/dl/)"

# The pinned version of the single requirement of a wrapper module.
pinned_version() {
  local dir="${modules}/$1" path="$2"
  (cd "${dir}" && go mod edit -json) |
    python3 -c 'import json, sys
path = sys.argv[1]
print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"] == path))' "${path}"
}

kubernetes_version="$(pinned_version kubernetes k8s.io/kubernetes)"
etcd_version="$(pinned_version etcd go.etcd.io/etcd/server/v3)"
kwok_version="$(pinned_version kwok sigs.k8s.io/kwok)"
helm_version="$(pinned_version helm helm.sh/helm/v3)"

key="k8s-${kubernetes_version}_etcd-${etcd_version}_kwok-${kwok_version}_helm-${helm_version}_r${recipe}"
cache_root="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubetune}"
version_dir="${cache_root}/control-plane/${key}"
bin_dir="${version_dir}/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm)

cache_complete() {
  local b
  for b in "${binaries[@]}"; do
    [[ -x "${bin_dir}/${b}" ]] || return 1
  done
}

if [[ "${mode}" == check ]]; then
  cache_complete && exit 0
  exit 1
fi

if cache_complete; then
  log "cached: ${bin_dir}"
  [[ "${mode}" == print ]] && echo "${bin_dir}"
  exit 0
fi

mkdir -p "${bin_dir}" "${version_dir}/work"
# Two test runs starting at once must not both compile (or write the same file).
exec 9>"${version_dir}/.lock"
if ! flock -n 9; then
  log "another build of ${key} is running; waiting for it"
  flock 9
fi

export CGO_ENABLED=0
export GOFLAGS="-mod=mod -trimpath -buildvcs=false"
# Never download a different toolchain than the one installed: the pins all build with Go 1.26.
export GOTOOLCHAIN=local
nice_level="${BUILD_NICE:-10}"
started=${SECONDS}

# Copy a wrapper module into the work dir (the repo stays free of build state) and print its path.
prepare_module() {
  local name="$1" work="${version_dir}/work/$1"
  mkdir -p "${work}"
  cp "${modules}/${name}/go.mod" "${work}/go.mod"
  if [[ -f "${modules}/${name}/go.sum" ]]; then
    cp "${modules}/${name}/go.sum" "${work}/go.sum"
  fi
  echo "${work}"
}

# go build <packages> into bin_dir, writing each binary under a temporary name first so that a
# killed build never leaves a truncated binary that looks complete.
go_build() {
  local work="$1" ldflags="$2"
  shift 2
  local out="${version_dir}/work/out"
  rm -rf "${out}" && mkdir -p "${out}"
  (cd "${work}" && nice -n "${nice_level}" go build -ldflags="${ldflags}" -o "${out}/" "$@")
}

install_binary() {
  local from="$1" name="$2"
  mv -f "${version_dir}/work/out/${from}" "${bin_dir}/.${name}.tmp"
  mv -f "${bin_dir}/.${name}.tmp" "${bin_dir}/${name}"
  log "  -> ${bin_dir}/${name}"
}

step_started=0
step() {
  step_started=${SECONDS}
  log "$*"
}
step_done() { log "  done in $((SECONDS - step_started))s"; }

# --- etcd -----------------------------------------------------------------------------------
if [[ ! -x "${bin_dir}/etcd" ]]; then
  step "etcd ${etcd_version}: downloading modules"
  work="$(prepare_module etcd)"
  (cd "${work}" && go mod download go.etcd.io/etcd/server/v3)
  log "etcd ${etcd_version}: compiling (go.etcd.io/etcd/server/v3)"
  go_build "${work}" "-s -w" go.etcd.io/etcd/server/v3
  # go names the binary after the last path element that is not a major-version suffix.
  install_binary server etcd
  step_done
fi

# --- kube-apiserver, kube-controller-manager, kube-scheduler ---------------------------------
if [[ ! -x "${bin_dir}/kube-apiserver" || ! -x "${bin_dir}/kube-controller-manager" ||
  ! -x "${bin_dir}/kube-scheduler" ]]; then
  step "kubernetes ${kubernetes_version}: downloading k8s.io/kubernetes"
  work="$(prepare_module kubernetes)"
  release_json="$(cd "${work}" && go mod download -json "k8s.io/kubernetes@${kubernetes_version}")"
  release_gomod="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["GoMod"])' \
    "${release_json}")"
  # The release's publication time (from the proxy's .info file) is the build date: stable
  # across rebuilds, unlike the time of this build.
  release_time="$(python3 -c 'import json, sys
with open(json.loads(sys.argv[1])["Info"]) as info:
    print(json.load(info)["Time"])' "${release_json}")"
  # The release's go.mod requires its staging modules at v0.0.0 and replaces them with
  # ./staging/src/...; outside the kubernetes repo each must be replaced by its published
  # v0.Y.Z tag instead. Read the list from the release itself so a version bump needs no edit.
  staging_version="v0.${kubernetes_version#v1.}"
  mapfile -t staging < <(
    cd "${work}" && go mod edit -json "${release_gomod}" | python3 -c 'import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if (r["New"].get("Path") or "").startswith("./staging/"):
        print(r["Old"]["Path"])'
  )
  ((${#staging[@]} > 0)) || die "found no staging modules in ${release_gomod}"
  log "kubernetes ${kubernetes_version}: replacing ${#staging[@]} staging modules with ${staging_version}"
  replace_args=()
  for module in "${staging[@]}"; do
    replace_args+=("-replace=${module}=${module}@${staging_version}")
  done
  (cd "${work}" && go mod edit "${replace_args[@]}")
  (cd "${work}" && go mod download)
  major="${kubernetes_version#v}"
  major="${major%%.*}"
  minor="${kubernetes_version#v*.}"
  minor="${minor%%.*}"
  # What kubernetes' hack/lib/version.sh stamps, so /version reports the real release. There is
  # no git checkout here: the tree state is "archive", as for a build from a source tarball.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${kubernetes_version}"
    ldflags+=" -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=${release_time}"
  done
  log "kubernetes ${kubernetes_version}: compiling kube-apiserver, kube-controller-manager," \
    "kube-scheduler (the slow part: 10-20 min on 2 cores)"
  go_build "${work}" "${ldflags}" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    install_binary "${b}" "${b}"
  done
  step_done
fi

# --- kwok -----------------------------------------------------------------------------------
if [[ ! -x "${bin_dir}/kwok" ]]; then
  step "kwok ${kwok_version}: downloading modules"
  work="$(prepare_module kwok)"
  (cd "${work}" && go mod download sigs.k8s.io/kwok)
  log "kwok ${kwok_version}: compiling"
  # kwok's version is a constant in its source; no ldflags needed.
  go_build "${work}" "-s -w" sigs.k8s.io/kwok/cmd/kwok
  install_binary kwok kwok
  step_done
fi

# --- helm -----------------------------------------------------------------------------------
if [[ ! -x "${bin_dir}/helm" ]]; then
  step "helm ${helm_version}: downloading modules"
  work="$(prepare_module helm)"
  (cd "${work}" && go mod download helm.sh/helm/v3)
  log "helm ${helm_version}: compiling"
  go_build "${work}" "-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}" \
    helm.sh/helm/v3/cmd/helm
  install_binary helm helm
  step_done
fi

cache_complete || die "the build finished but ${bin_dir} is incomplete"
rm -rf "${version_dir}/work/out"
log "all binaries in ${bin_dir} (this run took $((SECONDS - started))s)"
[[ "${mode}" == print ]] && echo "${bin_dir}"
exit 0
