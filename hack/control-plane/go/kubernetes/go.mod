// Wrapper module that pins the Kubernetes release whose kube-apiserver, kube-scheduler and
// kube-controller-manager the e2e tests run. build.sh adds a `replace` for every k8s.io staging
// module, derived from this release's own go.mod, before building.
module kubetune.dev/hack/control-plane/kubernetes

go 1.26.0

godebug default=go1.26

require k8s.io/kubernetes v1.37.2
