#!/usr/bin/env bash
# Build the binaries the e2e tests run from upstream Go modules, at the versions pinned in
# hack/control-plane/go/*/go.mod, into a cache directory per component keyed by its version and
# build recipe. A complete component is reused as is; a version bump rebuilds only that component.
#
#   kubernetes  kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
#   etcd        etcd
#   kwok        kwok
#   helm        helm
#   kueue       kueue (and its CRD and webhook manifests, from the same module)
#
# Usage:
#   hack/control-plane/build.sh                  build what is missing, print progress to stderr
#   hack/control-plane/build.sh --print-bin-dir  the same, then print only the bin dir on stdout
#   hack/control-plane/build.sh --check          exit 0 if the cache is complete, 1 if not; no build
#
# The bin dir holds a link to every binary, so one directory on PATH serves the tests. Component
# directories that no current key names are removed after a complete build.
#
# Environment:
#   KUBETUNE_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kubetune)
#   BUILD_NICE       niceness of the compiler (default 10; the build takes tens of minutes)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
modules="${here}/go"

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
kueue_version="$(pinned_version kueue sigs.k8s.io/kueue)"

# Bump a component's recipe when the way it is built changes (flags, layout, extra files).
declare -A keys=(
  [kubernetes]="kubernetes-${kubernetes_version}-r2"
  [etcd]="etcd-${etcd_version}-r1"
  [kwok]="kwok-${kwok_version}-r1"
  [helm]="helm-${helm_version}-r2"
  [kueue]="kueue-${kueue_version}-r1"
)
declare -A binaries=(
  [kubernetes]="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
  [etcd]="etcd"
  [kwok]="kwok"
  [helm]="helm"
  [kueue]="kueue"
)
components=(etcd kubernetes kwok helm kueue)

cache_root="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kubetune}"
root="${cache_root}/control-plane"
combined="$(for c in "${components[@]}"; do echo "${keys[${c}]}"; done | sha256sum | cut -c1-12)"
bin_dir="${root}/bin-${combined}"

component_complete() {
  local c="$1" b
  for b in ${binaries[${c}]}; do
    [[ -x "${root}/${keys[${c}]}/bin/${b}" ]] || return 1
  done
}

cache_complete() {
  local c b
  for c in "${components[@]}"; do
    component_complete "${c}" || return 1
    for b in ${binaries[${c}]}; do
      [[ -x "${bin_dir}/${b}" ]] || return 1
    done
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

mkdir -p "${root}"
# Two test runs starting at once must not both compile (or write the same file).
exec 9>"${root}/.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

export CGO_ENABLED=0
export GOFLAGS="-mod=mod -trimpath -buildvcs=false"
# Never download a different toolchain than the one installed: the pins all build with Go 1.26.
export GOTOOLCHAIN=local
nice_level="${BUILD_NICE:-10}"
started=${SECONDS}

# The directory a component is built in, with its wrapper module copied in (the repo stays free
# of build state), printed.
prepare_module() {
  local name="$1" work="${root}/${keys[$1]}/work"
  mkdir -p "${work}"
  cp "${modules}/${name}/go.mod" "${work}/go.mod"
  if [[ -f "${modules}/${name}/go.sum" ]]; then
    cp "${modules}/${name}/go.sum" "${work}/go.sum"
  fi
  echo "${work}"
}

# go build <packages> into the component's out dir, writing each binary under a temporary name
# first so that a killed build never leaves a truncated binary that looks complete.
go_build() {
  local work="$1" ldflags="$2"
  shift 2
  rm -rf "${work}/out" && mkdir -p "${work}/out"
  (cd "${work}" && nice -n "${nice_level}" go build -ldflags="${ldflags}" -o "${work}/out/" "$@")
}

install_binary() {
  local component="$1" from="$2" name="$3"
  local dest="${root}/${keys[${component}]}/bin"
  mkdir -p "${dest}"
  mv -f "${root}/${keys[${component}]}/work/out/${from}" "${dest}/.${name}.tmp"
  mv -f "${dest}/.${name}.tmp" "${dest}/${name}"
  log "  -> ${dest}/${name}"
}

step_started=0
step() {
  step_started=${SECONDS}
  log "$*"
}
step_done() { log "  done in $((SECONDS - step_started))s"; }

build_etcd() {
  step "etcd ${etcd_version}: downloading modules"
  local work
  work="$(prepare_module etcd)"
  (cd "${work}" && go mod download go.etcd.io/etcd/server/v3)
  log "etcd ${etcd_version}: compiling (go.etcd.io/etcd/server/v3)"
  go_build "${work}" "-s -w" go.etcd.io/etcd/server/v3
  # go names the binary after the last path element that is not a major-version suffix.
  install_binary etcd server etcd
  step_done
}

build_kubernetes() {
  step "kubernetes ${kubernetes_version}: downloading k8s.io/kubernetes"
  local work release_json release_gomod release_time staging_version major minor ldflags module pkg b
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
  local -a staging replace_args=()
  mapfile -t staging < <(
    cd "${work}" && go mod edit -json "${release_gomod}" | python3 -c 'import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if (r["New"].get("Path") or "").startswith("./staging/"):
        print(r["Old"]["Path"])'
  )
  ((${#staging[@]} > 0)) || die "found no staging modules in ${release_gomod}"
  log "kubernetes ${kubernetes_version}: replacing ${#staging[@]} staging modules with ${staging_version}"
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
  log "kubernetes ${kubernetes_version}: compiling ${binaries[kubernetes]}" \
    "(the slow part: 15-25 min on 2 cores)"
  local -a packages=()
  for b in ${binaries[kubernetes]}; do packages+=("k8s.io/kubernetes/cmd/${b}"); done
  go_build "${work}" "${ldflags}" "${packages[@]}"
  for b in ${binaries[kubernetes]}; do
    install_binary kubernetes "${b}" "${b}"
  done
  step_done
}

build_kwok() {
  step "kwok ${kwok_version}: downloading modules"
  local work
  work="$(prepare_module kwok)"
  (cd "${work}" && go mod download sigs.k8s.io/kwok)
  log "kwok ${kwok_version}: compiling"
  # kwok's version is a constant in its source; no ldflags needed.
  go_build "${work}" "-s -w" sigs.k8s.io/kwok/cmd/kwok
  install_binary kwok kwok kwok
  step_done
}

build_helm() {
  step "helm ${helm_version}: downloading modules"
  local work client_go k8s_major k8s_minor ldflags
  work="$(prepare_module helm)"
  (cd "${work}" && go mod download helm.sh/helm/v3)
  # Helm's Makefile stamps the Kubernetes version of the client-go it is built with; without it
  # `helm lint/template` assume Kubernetes 1.20.
  client_go="$(cd "${work}" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  k8s_major=1
  k8s_minor="${client_go#v0.}"
  k8s_minor="${k8s_minor%%.*}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
  done
  log "helm ${helm_version}: compiling (Kubernetes ${k8s_major}.${k8s_minor})"
  go_build "${work}" "${ldflags}" helm.sh/helm/v3/cmd/helm
  install_binary helm helm helm
  step_done
}

build_kueue() {
  step "kueue ${kueue_version}: downloading modules"
  local work source dest
  work="$(prepare_module kueue)"
  (cd "${work}" && go mod download sigs.k8s.io/kueue)
  source="$(cd "${work}" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  log "kueue ${kueue_version}: compiling"
  go_build "${work}" "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${kueue_version}" \
    sigs.k8s.io/kueue/cmd/kueue
  # The CRDs, RBAC and webhook configurations the controller expects, as the release ships them.
  dest="${root}/${keys[kueue]}/config"
  rm -rf "${dest}" && mkdir -p "${dest}"
  cp -r "${source}/config/components/crd/bases" "${dest}/crd"
  cp "${source}/config/components/webhook/manifests.yaml" "${dest}/webhook.yaml"
  chmod -R u+w "${dest}"
  install_binary kueue kueue kueue
  step_done
}

for component in "${components[@]}"; do
  component_complete "${component}" || "build_${component}"
done

# One directory of links, so that PATH and the tests see every binary in one place.
tmp_bin="${root}/.bin-${combined}.tmp"
rm -rf "${tmp_bin}" && mkdir -p "${tmp_bin}"
for component in "${components[@]}"; do
  rm -rf "${root}/${keys[${component}]}/work/out"
  for b in ${binaries[${component}]}; do
    ln -s "../${keys[${component}]}/bin/${b}" "${tmp_bin}/${b}"
  done
done
rm -rf "${bin_dir}" && mv "${tmp_bin}" "${bin_dir}"
cache_complete || die "the build finished but ${bin_dir} is incomplete"

# Prune what no current key names (earlier versions and recipes).
for entry in "${root}"/*; do
  name="$(basename "${entry}")"
  [[ "${name}" == "bin-${combined}" ]] && continue
  keep=0
  for component in "${components[@]}"; do
    [[ "${name}" == "${keys[${component}]}" ]] && keep=1
  done
  if ((keep == 0)); then
    log "pruning ${entry}"
    rm -rf "${entry}"
  fi
done

log "all binaries in ${bin_dir} (this run took $((SECONDS - started))s)"
[[ "${mode}" == print ]] && echo "${bin_dir}"
exit 0
