"""The image's `flashsale operator` on the real control plane (the session's etcd and
kube-apiserver, shared with tests/kubernetes), run as the chart runs it: UID 10001, a
read-only root, HOME=/tmp, logged in as its own ServiceAccount with exactly the chart's RBAC
through a kubeconfig mounted read-only, with real Redis and PostgreSQL. It logs in, serves its
liveness endpoint, turns a FlashSale into a sale and writes its status (through the status
subresource) and Events; without any credentials it ends with one line and exit code 7.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from flashsale.operator.kube import FIELD_MANAGER
from tests.kubernetes.operator_process import (
    TEST_MANAGER,
    condition,
    flashsale,
    flashsales,
    grant,
    spec_for,
)
from tests.support import image
from tests.support.facts import Facts
from tests.support.image import Mount
from tests.support.kubernetes import ControlPlane, version_of, wait_for

from .conftest import RunImage, free_port

pytestmark = pytest.mark.image

NAMESPACE = "img-shop"
KUBE_MOUNT = "/etc/kube"
EXIT_KUBERNETES = 7  # flashsale/cli.py KUBERNETES: no credentials, or no API server


def operator_env(port: int, **more: str) -> dict[str, str]:
    return {
        "FLASHSALE_OPERATOR_LIVENESS": f"http://127.0.0.1:{port}/healthz",
        "FLASHSALE_OPERATOR_TICK_SECONDS": "0.5",
        "FLASHSALE_LOG_JSON": "true",
        **more,
    }


def health(port: int) -> dict[str, Any] | None:
    """/healthz's JSON once it answers 200 (kopf runs and its probes ran)."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.TransportError:
        return None
    return dict(answer.json()) if answer.status_code == 200 else None


def test_the_operator_without_kubernetes_credentials_ends_with_one_line(
    migrated: str, run_image: RunImage, cluster_facts: Facts
) -> None:
    """No service account mounted and no kubeconfig (HOME=/tmp holds no ~/.kube): the operator
    checks its credentials before kopf starts and ends at once, saying why in one line, rather
    than letting kopf retry its login forever."""
    operator = run_image(["operator"], env=operator_env(free_port()))
    code = operator.wait(120)
    lines = operator.lines()
    assert code == EXIT_KUBERNETES, operator.output()
    assert lines[-1] == (
        "flashsale: no Kubernetes credentials: neither an in-cluster service account nor a "
        "kubeconfig (KUBECONFIG or ~/.kube/config) was found"
    ), operator.output()
    assert "Traceback" not in operator.output(), operator.output()
    assert not any("operator starting" in line for line in lines), operator.output()
    cluster_facts.record("image_operator_without_credentials_exit", code)


def sale_row(env: dict[str, str], sale_id: str) -> dict[str, Any] | None:
    """The sale as the image's operator wrote it to PostgreSQL (the image's own schema)."""

    async def fetch() -> dict[str, Any] | None:
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            await conn.execute(f'SET search_path TO "{env["FLASHSALE_DATABASE_SCHEMA"]}"')
            row = await conn.fetchrow(
                "SELECT stock, identity_required, pow_difficulty FROM sales WHERE id = $1",
                sale_id,
            )
        finally:
            await conn.close()
        return None if row is None else dict(row)

    return image.run_sync(fetch)


def test_the_operator_logs_in_and_runs_a_flashsale(
    kube: ControlPlane,
    admin: httpx.Client,
    flashsale_crd: dict[str, Any],
    migrated: str,
    image_env: dict[str, str],
    run_image: RunImage,
    tmp_path: Path,
    cluster_facts: Facts,
) -> None:
    """The chart's operator RBAC applied for a release in img-system serving img-shop; the
    ServiceAccount's kubeconfig (a TokenRequest token, the CA inlined) in a folder mounted
    read-only, readable by UID 10001 as a Secret volume's files are."""
    granted = grant(kube, admin, tmp_path, "img-system", [NAMESPACE])
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir(mode=0o755)
    kube_dir.chmod(0o755)  # whatever the umask
    kube.portable_kubeconfig(granted.kubeconfig, kube_dir / "config")

    port = free_port()
    operator = run_image(
        ["operator"],
        env=operator_env(
            port,
            KUBECONFIG=f"{KUBE_MOUNT}/config",
            FLASHSALE_OPERATOR_NAMESPACE=NAMESPACE,
        ),
        mounts=[Mount(kube_dir, KUBE_MOUNT)],
    )
    version = version_of(kube)["gitVersion"]
    reachable = json.loads(operator.wait_for_line('"Kubernetes API reachable"', timeout=120))
    assert reachable["version"] == version, reachable
    operator.wait_for_line('"operator starting"')
    probes: list[dict[str, Any]] = []

    def healthy() -> bool:
        probes[:] = [found] if (found := health(port)) else []
        return bool(probes)

    operator.wait_for(healthy, f"200 from :{port}/healthz")
    assert probes[0]["redis"]["ok"] and probes[0]["postgresql"]["ok"], probes

    # a FlashSale an hour away, asking for proof of work: the operator makes the sale
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    spec = spec_for(
        soon,
        soon + timedelta(hours=1),
        saleId=f"img-{secrets.token_hex(4)}",
        shoppers={"proofOfWork": {"enabled": True, "difficulty": 20}},
    )
    path = flashsales(NAMESPACE, "drop")
    created = admin.post(
        flashsales(NAMESPACE),
        json=flashsale("drop", spec),
        params={"fieldManager": TEST_MANAGER},
    )
    assert created.status_code == 201, created.text

    def scheduled() -> dict[str, Any] | None:
        body = admin.get(path).json()
        return body if (body.get("status") or {}).get("phase") == "Scheduled" else None

    body = wait_for("the FlashSale Scheduled", scheduled, 60)
    assert condition(body, "Accepted")["status"] == "True", body["status"]
    assert body["status"]["saleId"] == spec["saleId"]
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"] == 1
    assert sale_row(image_env, spec["saleId"]) == {
        "stock": 12,
        "identity_required": False,
        "pow_difficulty": 20,
    }
    # the status through the status subresource, by the operator's own client
    status_writes = [e for e in body["metadata"]["managedFields"] if e.get("subresource")]
    assert status_writes and {e["manager"] for e in status_writes} == {FIELD_MANAGER}
    assert all(e["subresource"] == "status" for e in status_writes), status_writes

    def events() -> list[str]:
        answer = admin.get(
            f"/api/v1/namespaces/{NAMESPACE}/events",
            params={"fieldSelector": "involvedObject.name=drop"},
        )
        assert answer.status_code == 200, answer.text
        return sorted(e["reason"] for e in answer.json()["items"])

    def told() -> list[str] | None:
        found = events()
        return found if {"Applied", "Scheduled"} <= set(found) else None

    reasons = wait_for("the Applied and Scheduled Events", told, 30)

    # deleted: the finalizer runs (nothing sold, nothing to drain) and the object goes
    assert admin.delete(path).status_code == 200
    wait_for("the FlashSale gone", lambda: admin.get(path).status_code == 404, 60)
    forbidden = [line for line in operator.lines() if "forbidden" in line.lower()]
    assert forbidden == [], forbidden
    assert "Traceback" not in operator.output(), operator.output()
    assert operator.stop() == 0, operator.output()

    cluster_facts.record("image_operator_logged_in", version)
    cluster_facts.record("image_operator_liveness", True)
    cluster_facts.record("image_operator_phase", "Scheduled")
    cluster_facts.record("image_operator_events", reasons)
