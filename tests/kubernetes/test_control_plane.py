"""The test control plane itself: the release scripts/envtest/go.mod pins, RBAC on, and
nothing left behind when it stops, even after a failure."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
import pytest

from tests.support.facts import Facts
from tests.support.kubernetes import ENVTEST, ControlPlane, control_plane, version_of


def test_the_api_server_is_the_pinned_release(kube: ControlPlane, cluster_facts: Facts) -> None:
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)$", (ENVTEST / "go.mod").read_text(), re.M)
    assert pinned
    version = version_of(kube)
    assert version["gitVersion"] == pinned.group(1) == "v1.37.2"
    assert (version["major"], version["minor"]) == ("1", "37")
    cluster_facts.record("apiserver", version["gitVersion"])


def test_anonymous_requests_are_not_authorized(kube: ControlPlane) -> None:
    with kube.client() as admin:
        assert admin.get("/api/v1/namespaces").status_code == 200
    with httpx.Client(
        base_url=kube.url, verify=ssl.create_default_context(cafile=str(kube.ca_file))
    ) as anonymous:
        answer = anonymous.get("/api/v1/namespaces")
    assert answer.status_code == 403
    assert 'User "system:anonymous" cannot list resource "namespaces"' in answer.json()["message"]


def test_a_failing_session_still_stops_everything() -> None:
    folder: Path | None = None
    with pytest.raises(RuntimeError, match="a test failed"), control_plane() as plane:
        folder = plane.folder
        assert (folder / "etcd").is_dir()
        raise RuntimeError("a test failed")
    assert folder is not None and not folder.exists()
    with pytest.raises(httpx.TransportError), httpx.Client(verify=False) as client:
        client.get(f"{plane.url}/readyz", timeout=2)
