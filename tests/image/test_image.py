"""The image itself, built daemonless and run the way the Helm chart runs it.

`make image` (scripts/image.sh) builds the Dockerfile with buildah on a debootstrapped
debian:bookworm-slim; these tests run its commands as UID 10001 on a read-only root with tmpfs
on /tmp and /tmp/flashsale-metrics, against the local Redis and PostgreSQL: the migrations
create the schema, the API answers its probes and sells, the admitter admits and pre-warms, the
persister writes the orders. The operator's own tests, on the real control plane, are in
test_operator.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import image
from tests.support.facts import Facts
from tests.support.image import Mount

from .conftest import ADMIN_TOKEN, RunImage, free_port

pytestmark = pytest.mark.image


def inspect() -> dict[str, Any]:
    """The image as buildah describes it (the same storage as scripts/image.sh)."""
    store = image.REPO / ".cache" / "containers"
    result = subprocess.run(
        [
            *("buildah", "--root", str(store / "storage"), "--runroot", str(store / "run")),
            *("--storage-driver", "vfs", "inspect", "--type", "image", image.IMAGE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_a_second_build_with_nothing_changed_reuses_the_image(
    built_image: image.Build, cluster_facts: Facts
) -> None:
    again = image.build()
    assert not again.built, again.log
    described = inspect()
    assert again.size_mb == built_image.size_mb
    config = described["OCIv1"]["config"]
    assert config["User"] == "10001"
    assert config["Entrypoint"] == ["flashsale"] and config["Cmd"] == ["api"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.base.name"] == "docker.io/library/debian:bookworm-slim"
    assert len(labels["io.flashsale.inputs"]) == 32
    # built on the debootstrapped base scripts/image.sh imported under the name FROM uses
    assert len(labels["io.flashsale.base-key"]) == 16
    # a budget, not a measure: a dependency that bloats the image shows up here
    assert built_image.size_mb < 500
    cluster_facts.record("image_built", True)
    cluster_facts.record("image_mb", built_image.size_mb)
    if built_image.built:  # this session built it (a cache hit says nothing of the time)
        cluster_facts.record("image_build_seconds", round(built_image.seconds, 1))


def test_commands_run_as_the_chart_runs_them(run_image: RunImage) -> None:
    """UID 10001 without capabilities or a way to gain any, a read-only root, writable tmpfs
    where the chart mounts emptyDirs, and only the image's variables (none of the host's)."""
    probe = """
import json, os, pathlib
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
result = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
          "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
          "no_new_privs": status["NoNewPrivs"].strip(), "pid": os.getpid(),
          "cwd": os.getcwd(), "env": sorted(os.environ)}
for place in ("/", "/opt/flashsale", "/etc", "/tmp", "/tmp/flashsale-metrics"):
    try:
        pathlib.Path(place, "probe").write_text("x")
        result[place] = "writable"
    except OSError as error:
        result[place] = error.strerror
print(json.dumps(result))
"""
    container = run_image(["-c", probe], entrypoint="python3")
    assert container.wait(60) == 0, container.output()
    seen = json.loads(container.lines()[-1])
    assert (seen["uid"], seen["gid"]) == (10001, 10001) and set(seen["groups"]) <= {10001}, seen
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_prm"], 16) == 0, seen
    assert seen["no_new_privs"] == "1" and seen["pid"] == 1, seen
    assert seen["cwd"] == "/opt/flashsale"
    for place in ("/", "/opt/flashsale", "/etc"):
        assert seen[place] == "Read-only file system", (place, seen[place])
    assert seen["/tmp"] == seen["/tmp/flashsale-metrics"] == "writable"
    assert "PROMETHEUS_MULTIPROC_DIR" in seen["env"] and "REDIS_URL" in seen["env"]
    assert not {"VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "CI"} & set(seen["env"]), seen["env"]


def test_mounts_reach_the_command_read_only(run_image: RunImage, tmp_path: Path) -> None:
    """The hook for what needs more than Redis and PostgreSQL, e.g. a kubeconfig for the
    operator: a host folder mounted read-only, a variable naming the file in it."""
    (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\n")
    # readable by UID 10001, as a Secret volume's files are (pytest makes tmp_path 0700)
    tmp_path.chmod(0o755)
    (tmp_path / "config").chmod(0o644)
    probe = """
import os, pathlib
path = pathlib.Path(os.environ["KUBECONFIG"])
print(path.read_text().splitlines()[1])
try:
    (path.parent / "other").write_text("x")
except OSError as error:
    print(error.strerror)
"""
    container = run_image(
        ["-c", probe],
        entrypoint="python3",
        env={"KUBECONFIG": "/etc/kube/config"},
        mounts=[Mount(tmp_path, "/etc/kube")],
    )
    assert container.wait(60) == 0, container.output()
    assert container.lines()[-2:] == ["kind: Config", "Read-only file system"]
    assert not (tmp_path / "other").exists()


def test_migrate_creates_the_schema_and_is_idempotent(
    migrated: str, image_env: dict[str, str], run_image: RunImage
) -> None:
    assert "migrations applied:" in migrated
    again = run_image(["migrate"])
    assert again.wait(120) == 0, again.output()
    assert "none (up to date)" in again.output()

    async def tables() -> set[str]:
        conn = await asyncpg.connect(image_env["DATABASE_URL"])
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                image_env["FLASHSALE_DATABASE_SCHEMA"],
            )
        finally:
            await conn.close()
        return {row["table_name"] for row in rows}

    assert {"sales", "sale_inventory", "orders", "order_seats", "order_events"} <= (
        image.run_sync(tables)
    )


def wait_http(container: image.Container, url: str, text: str = "") -> httpx.Response:
    """The first 200 from `url` (whose body holds `text`), while the command keeps running."""
    answer: list[httpx.Response] = []

    def answered() -> bool:
        try:
            response = httpx.get(url, timeout=5)
        except httpx.TransportError:
            return False
        answer[:] = [response]
        return response.status_code == 200 and text in response.text

    container.wait_for(answered, f"200 from {url}" + (f" with {text!r}" if text else ""))
    return answer[0]


def test_the_api_answers_its_probes_and_stops_cleanly(migrated: str, run_image: RunImage) -> None:
    """`flashsale api` with two uvicorn workers (the chart's default: they share metrics in
    the tmpfs and need /dev/shm), answering /healthz and /readyz like the kubelet asks."""
    port = free_port()
    api = run_image(["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"])
    base = f"http://127.0.0.1:{port}"
    assert wait_http(api, f"{base}/healthz").status_code == 200
    ready = wait_http(api, f"{base}/readyz")
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok"}, ready.text
    metrics = httpx.get(f"{base}/metrics", timeout=10)
    assert metrics.status_code == 200 and "flashsale_" in metrics.text
    assert httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    assert api.stop() == 0, api.output()


def test_api_admitter_and_persister_sell_through_the_image(
    migrated: str, image_env: dict[str, str], run_image: RunImage
) -> None:
    """Three roles of the image together: the admitter pre-warms the stock and admits the
    shopper, the API holds and sells, the persister writes the hold to PostgreSQL. Both
    background roles serve /metrics on their port."""
    port, admitter_port, persister_port = free_port(), free_port(), free_port()
    api = run_image(["api", "--host", "127.0.0.1", "--port", str(port)])
    admitter = run_image(["admitter"], env={"FLASHSALE_METRICS_PORT": str(admitter_port)})
    persister = run_image(["persister"], env={"FLASHSALE_METRICS_PORT": str(persister_port)})
    base = f"http://127.0.0.1:{port}"
    wait_http(api, f"{base}/readyz")
    for role, metrics_port in ((admitter, admitter_port), (persister, persister_port)):
        wait_http(role, f"http://127.0.0.1:{metrics_port}/metrics")

    now = datetime.now(UTC)
    sale_id = f"img-{secrets.token_hex(4)}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        created = http.post(
            "/admin/sales",
            headers=admin,
            json={
                "id": sale_id,
                "name": "Image sale",
                "stock": 3,
                "price_cents": 1000,
                "opens_at": (now - timedelta(minutes=1)).isoformat(),
                "closes_at": (now + timedelta(hours=1)).isoformat(),
                "admission": {
                    "batch_size": 10,
                    "batch_interval_ms": 100,
                    "max_active": 10,
                    "admission_ttl_seconds": 600,
                    "abandon_after_seconds": 60,
                },
            },
        )
        assert created.status_code == 201, created.text
        visitor = f"v-{secrets.token_hex(8)}"
        joined = http.post(f"/api/sales/{sale_id}/join", headers={"X-Visitor-Id": visitor})
        assert joined.status_code == 201, joined.text
        ticket = joined.json()["ticket"]

        status: dict[str, Any] = {}

        def admitted() -> bool:
            answer = http.get(f"/api/sales/{sale_id}/status", headers={"X-Queue-Ticket": ticket})
            status.update(answer.json())
            return status.get("state") == "admitted"

        admitter.wait_for(admitted, "the admission of the shopper")
        held = http.post(
            f"/api/sales/{sale_id}/holds",
            headers={
                "Authorization": f"Bearer {status['admission_token']}",
                "Idempotency-Key": secrets.token_hex(8),
            },
            json={"quantity": 2},
        )
        assert held.status_code == 201, held.text
        order = held.json()

        async def stored() -> tuple[str, int] | None:
            conn = await asyncpg.connect(image_env["DATABASE_URL"])
            try:
                await conn.execute(f'SET search_path TO "{image_env["FLASHSALE_DATABASE_SCHEMA"]}"')
                row = await conn.fetchrow(
                    "SELECT status, quantity FROM orders WHERE id = $1::uuid", order["id"]
                )
            finally:
                await conn.close()
            return None if row is None else (row["status"], row["quantity"])

        persister.wait_for(
            lambda: image.run_sync(stored) == ("held", 2), "the hold written by the persister"
        )
        paid = http.post(
            f"/api/sales/{sale_id}/orders/{order['id']}/pay",
            headers={"X-Visitor-Id": visitor},
            json={"payment_token": "tok_approve"},
        )
        assert paid.status_code == 200 and paid.json()["status"] == "confirmed", paid.text
        assert image.run_sync(stored) == ("confirmed", 2)

    # and their metrics say so (multi-process files in their own tmpfs)
    admitted = f'flashsale_admitted_total{{sale="{sale_id}"}} 1.0'
    wait_http(admitter, f"http://127.0.0.1:{admitter_port}/metrics", admitted)
    persisted = f'flashsale_persisted_entries_total{{sale="{sale_id}",type="hold"}} 1.0'
    wait_http(persister, f"http://127.0.0.1:{persister_port}/metrics", persisted)
    for role in (api, admitter, persister):
        assert role.stop() == 0, role.output()
