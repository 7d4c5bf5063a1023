"""Tests against a real kube-apiserver and etcd (`make envtest` builds them), marked
`kubernetes`. A package, so that its conftest.py is `cluster.conftest` and never shadows
tests/conftest.py, which other test modules import as `conftest`."""
