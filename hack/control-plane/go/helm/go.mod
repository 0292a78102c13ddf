// Wrapper module that pins the helm CLI used to lint and render charts in the tests.
module kubetune.dev/hack/control-plane/helm

go 1.26.0

require helm.sh/helm/v3 v3.22.0
