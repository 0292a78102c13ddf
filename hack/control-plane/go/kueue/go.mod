// Wrapper module that pins Kueue, which admits runner pods against ClusterQueue quotas in the
// e2e cluster. build.sh also copies its CRDs and webhook configuration from this module.
module kubetune.dev/hack/control-plane/kueue

go 1.26.0

require sigs.k8s.io/kueue v0.17.0
