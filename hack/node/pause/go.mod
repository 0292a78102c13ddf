// The real test node's sandbox ("pause") process: it holds a pod's namespaces open and does
// nothing else. Built by hack/control-plane/build.sh into a static binary.
module kubetune.dev/hack/node/pause

go 1.26.0
