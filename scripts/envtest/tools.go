//go:build tools

// Package envtest pins the sources of the control plane the tests run against: the official
// kube-apiserver of k8s.io/kubernetes and the etcd server release it is tested with. It is
// never compiled; build.sh builds the two commands from the module graph go.mod fixes.
package envtest

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
