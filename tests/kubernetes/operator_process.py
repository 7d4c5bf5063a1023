"""`flashsale operator` as a separate process against the test control plane, logged in as its
own ServiceAccount with exactly the chart's RBAC (templates/operator-rbac.yaml, rendered and
applied as Helm would), plus what the operator tests share.

The signal that the chart's RBAC lacks a permission: the API server answers 403 with a
message `... is forbidden: User "system:serviceaccount:NS:NAME" cannot VERB resource ...`,
and every client the operator uses logs that message (kopf for its watches, patches and
Events; operator/kube.py for the scaling target). `Operator.forbidden()` finds those lines in
the operator's own log; a test with a permission taken away shows the signal is seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import yaml

from flashsale.config import Settings
from tests.support import REPO, free_port
from tests.support.kubernetes import ControlPlane, Resources, apply, create_namespace

CHART = REPO / "charts" / "flashsale"
RELEASE = "flashsale"
ACCOUNT = f"{RELEASE}-operator"
FLASHSALE = str(Path(sys.executable).parent / "flashsale")
GROUP_VERSION = "flashsale.io/v1alpha1"
TEST_MANAGER = "test-kubectl"  # the field manager of what the tests write as a person would
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def flashsales(namespace: str, name: str = "") -> str:
    return f"/apis/{GROUP_VERSION}/namespaces/{namespace}/flashsales" + (f"/{name}" if name else "")


def flashsale(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A FlashSale manifest."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "FlashSale",
        "metadata": {"name": name},
        "spec": spec,
    }


def spec_for(opens: datetime, closes: datetime, **extra: Any) -> dict[str, Any]:
    """A FlashSale spec of 12 units between `opens` and `closes` (UTC), with a sale id of its
    own, plus `extra` fields."""
    spec: dict[str, Any] = {
        "saleId": f"k8s-{secrets.token_hex(4)}",
        "product": {"name": "Real server sale", "priceCents": 1000, "currency": "EUR"},
        "inventory": {"quantity": 12},
        "schedule": {
            "opensAt": opens.isoformat(),
            "closesAt": closes.isoformat(),
            "timeZone": "UTC",
        },
        "admission": {"batchSize": 5, "batchIntervalMs": 100, "maxActive": 20},
        "perShopperLimit": 2,
    }
    spec.update(extra)
    return spec


def hpa_path(namespace: str, name: str) -> str:
    return f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}"


def render_operator_rbac(values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The operator's ServiceAccount, (Cluster)Roles and bindings as the chart renders them
    for a release in `namespace`, and the KopfPeering objects when peering is on."""
    values = {"crds": {"install": False}, **values}
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects = []
    for name, text in rendered.items():
        if name.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            labels = obj["metadata"].get("labels") or {}
            ours = labels.get("app.kubernetes.io/component") == "operator"
            if (obj["kind"] in RBAC_KINDS and ours) or obj["kind"].endswith("KopfPeering"):
                objects.append(obj)
    return objects


@dataclass
class Grant:
    """A release namespace holding the operator's ServiceAccount and the namespaces it serves,
    with the chart's rules applied for real."""

    release_namespace: str
    served: list[str]
    objects: list[dict[str, Any]]
    kubeconfig: Path


def grant(
    kube: ControlPlane,
    admin: httpx.Client,
    folder: Path,
    release_namespace: str,
    served: list[str],
    *,
    peering: bool = False,
    edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj,
) -> Grant:
    """Create the namespaces, apply the chart's operator RBAC (each object through `edit`, a
    test's way to take a permission away), and write a kubeconfig of the ServiceAccount (a
    TokenRequest token, as its pod would have)."""
    resources = Resources(admin)
    existing = {n["metadata"]["name"] for n in admin.get("/api/v1/namespaces").json()["items"]}
    for namespace in {release_namespace, *served} - existing:
        create_namespace(admin, namespace)
    values = {"operator": {"watchNamespaces": served, "peering": {"enabled": peering}}}
    objects = [edit(obj) for obj in render_operator_rbac(values, release_namespace)]
    for obj in objects:
        answer = apply(admin, resources.of(obj, release_namespace), obj)
        assert answer.status_code in (200, 201), answer.text
    kubeconfig = kube.service_account_kubeconfig(
        release_namespace, ACCOUNT, folder / f"{release_namespace}-{'-'.join(served)}.kubeconfig"
    )
    return Grant(release_namespace, served, objects, kubeconfig)


def operator_environment(settings: Settings, kubeconfig: Path, **overrides: str) -> dict[str, str]:
    """The test's stores, schema and prefix; kopf logs in with `kubeconfig` only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "KUBECONFIG" and not k.startswith(("KUBERNETES_", "FLASHSALE_"))
    }
    env.update(
        KUBECONFIG=str(kubeconfig),
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        FLASHSALE_REDIS_PREFIX=settings.redis_prefix,
        FLASHSALE_DATABASE_SCHEMA=settings.database_schema,
        FLASHSALE_OPERATOR_TICK_SECONDS="0.5",
        FLASHSALE_METRICS_PORT="0",
        FLASHSALE_LOG_JSON="true",
    )
    env.update(overrides)
    return env


@dataclass
class Operator:
    """One `flashsale operator` process, its log in a file."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        self.env["FLASHSALE_OPERATOR_LIVENESS"] = f"http://127.0.0.1:{self.port}/healthz"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [FLASHSALE, "operator"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def entries(self) -> list[dict[str, Any]]:
        found = []
        for line in self.lines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"msg": line})
        return found

    def forbidden(self) -> list[str]:
        """Log lines carrying the API server's RBAC refusal."""
        return [line for line in self.lines() if "forbidden" in line.lower()]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> tuple[int, dict[str, Any]] | None:
        """(status, JSON) of /healthz, None while nothing answers."""
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
        except httpx.TransportError:
            return None
        return answer.status_code, answer.json() if answer.status_code == 200 else {}

    async def ready(self, within: float = 60.0) -> dict[str, Any]:
        """Wait until /healthz answers 200 (kopf runs, the probes ran); its JSON."""

        def answered() -> dict[str, Any] | None:
            assert self.alive(), f"the operator exited:\n{self.tail()}"
            health = self.health()
            return health[1] if health is not None and health[0] == 200 else None

        return dict(await eventually(answered, "the operator answers /healthz", within))

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as an OOM kill or a node loss."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines()[-lines:])


async def eventually(check: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    """Poll `check` (sync or async) until it returns something true."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting until {what}")
        await asyncio.sleep(0.1)


def async_admin(kube: ControlPlane) -> httpx.AsyncClient:
    """The admin (`system:masters`), for tests that run in the event loop."""
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    context.load_cert_chain(str(kube.admin_cert), str(kube.admin_key))
    return httpx.AsyncClient(base_url=kube.url, verify=context, timeout=30)


async def create(admin: httpx.AsyncClient, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    """POST, as `kubectl create` would (field manager TEST_MANAGER)."""
    answer = await admin.post(path, json=obj, params={"fieldManager": TEST_MANAGER})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def get(admin: httpx.AsyncClient, path: str) -> dict[str, Any]:
    answer = await admin.get(path)
    assert answer.status_code == 200, (path, answer.status_code, answer.text)
    return dict(answer.json())


async def events_of(admin: httpx.AsyncClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events about one object, oldest first."""
    answer = await admin.get(
        f"/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    return sorted(items, key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return dict(found)
    return {}


def scaled_objects(namespace: str, name: str = "web") -> Iterable[tuple[str, dict[str, Any]]]:
    """A Deployment with no replicas (an HPA owns them) and its HPA, as the chart makes the
    API's; nothing runs them here, so only the operator changes them."""
    labels = {"app.kubernetes.io/name": name}
    yield (
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "api", "image": "flashsale:test"}]},
                },
            },
        },
    )
    yield (
        f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 2,
                "maxReplicas": 20,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    )
