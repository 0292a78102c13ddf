// Wrapper module that pins kwok, which simulates the GPU and CPU nodes of the e2e cluster.
module kubetune.dev/hack/control-plane/kwok

go 1.26.0

require sigs.k8s.io/kwok v0.8.0
