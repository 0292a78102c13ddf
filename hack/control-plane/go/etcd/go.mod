// Wrapper module that pins the etcd server the e2e kube-apiserver stores its data in.
module kubetune.dev/hack/control-plane/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.6.16
