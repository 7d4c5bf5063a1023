"""Fixtures of the tests against a real control plane (etcd + kube-apiserver, built from
source by `make envtest`): one per session, started once, stopped at the end.

Every test in this folder is marked `kubernetes` (`pytest -m kubernetes`, `make cluster-check`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.facts import cluster_facts  # noqa: F401  (a fixture)
from tests.support.kubernetes import ControlPlane, control_plane, install_crd


@pytest.fixture(scope="session")
def kube() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


@pytest.fixture(scope="session")
def admin(kube: ControlPlane) -> Iterator[httpx.Client]:
    with kube.client() as client:
        yield client


@pytest.fixture(scope="module")
def flashsale_crd(admin: httpx.Client) -> dict[str, Any]:
    return install_crd(admin)
