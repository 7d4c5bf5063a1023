"""The real operator (kopf, every handler) against kmock's emulated Kubernetes API, with real
Redis and PostgreSQL: a FlashSale becomes a sale, the stock is pre-warmed and the HPA raised
before the opening, the status follows the room, the HPA comes back after the cooldown, and
deleting archives the sale and clears Redis. Bad manifests get conditions a person can act on.

The recipe: `kmock.resources.load_bundled()` (built-in resources, so kopf finds namespaces and
events), the FlashSale resource declared with a status subresource, objects preloaded through
`kmock.objects`, a per-test `kopf.OperatorRegistry()` whose login handler points at
`kmock.url`, and `kopf.operator(..., standalone=True, stop_flag=...)` run as a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import kopf
import pytest

from flashsale.config import Settings
from flashsale.operator import rbac
from flashsale.operator.main import serve
from flashsale.operator.scaling import ANNOTATIONS, HPA, SCALED_FOR
from flashsale.waiting_room.services import Services
from flashsale.wiring import opened

NS = "shop"
FLASHSALES = "flashsale.io/v1alpha1/flashsales"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
DEPLOYMENTS = "apps/v1/deployments"
ORIGINAL, APPLIED = ANNOTATIONS[HPA]
TICK = 0.25


def flashsale_path(name: str = "") -> str:
    return f"/apis/flashsale.io/v1alpha1/namespaces/{NS}/flashsales" + (f"/{name}" if name else "")


@pytest.fixture
def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources.load_bundled()
    kmock.resources[FLASHSALES] = kmock.ResourceInfo(
        kind="FlashSale",
        singular="flashsale",
        namespaced=True,
        shortnames={"fs", "fsale"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        subresources={"status"},
    )
    kmock.objects[HPAS, NS, "web"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": NS, "uid": "hpa-web", "annotations": {}},
        "spec": {
            "minReplicas": 2,
            "maxReplicas": 20,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        },
    }
    kmock.objects[DEPLOYMENTS, NS, "web"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "uid": "deploy-web"},
        "spec": {"replicas": 2},
    }
    return kmock


@contextlib.asynccontextmanager
async def operator(k8s: kmock.KubernetesEmulator, settings: Settings) -> AsyncIterator[None]:
    """`flashsale operator` as production runs it (`main.serve`: its own Redis and PostgreSQL
    connections, every handler), in a thread with its own event loop, like a separate process.

    Its own loop matters: when kopf stops, it cancels every task created in its loop since it
    started, which here would include kmock's request handlers."""
    settings = replace(
        settings,
        operator_namespace=NS,
        operator_tick_seconds=TICK,
        operator_liveness="",
        operator_peering="",
    )
    kopf_settings = kopf.OperatorSettings()
    # kmock 0.8 cannot parse `GET /api/v1/namespaces` (the namespaces collection itself), so
    # kopf's run-time observation of namespaces and CRDs is off here, as in kopf's own kmock
    # example; the operator serves the one namespace named.
    kopf_settings.scanning.disabled = True
    # a request cut by the previous operator's exit is retried soon, not after kopf's 1 s+
    kopf_settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    stop = threading.Event()
    loop = asyncio.new_event_loop()

    async def operate() -> None:
        async with opened(settings, pool_size=4) as services:
            await serve(
                services,
                kopf_settings=kopf_settings,
                stop_flag=stop,
                login=lambda **_: kopf.ConnectionInfo(server=str(k8s.url)),
            )

    main = loop.create_task(operate())
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # surfaced in the test below
            failure.append(error)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 1.0)
        if thread.is_alive():
            # kopf waits up to 5 s for a request cut short by its own exit (it retries after
            # logging in again, which an exiting operator no longer does): cut it short, as a
            # crash or a SIGKILL would; the operator must not depend on a clean exit anyway
            loop.call_soon_threadsafe(main.cancel)
            await asyncio.to_thread(thread.join, 10.0)
        assert not thread.is_alive(), "the operator did not stop"
    assert not failure, failure


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "flashsale.io/v1alpha1",
        "kind": "FlashSale",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": secrets.token_hex(8),
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": spec,
    }


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def spec_for(opens: datetime, closes: datetime, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "product": {"name": "Operator test", "priceCents": 1000, "currency": "EUR"},
        "inventory": {"quantity": 50},
        "schedule": {
            "opensAt": opens.isoformat(),
            "closesAt": closes.isoformat(),
            "timeZone": "UTC",
        },
        "admission": {"batchSize": 5, "batchIntervalMs": 100, "maxActive": 10},
    }
    spec.update(extra)
    return spec


async def apply(k8s: kmock.KubernetesEmulator, obj: dict[str, Any]) -> None:
    async with k8s.post(flashsale_path(), json=obj) as response:
        assert response.status < 300, await response.text()


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], what: str, within: float = 10.0
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


def obj(k8s: kmock.KubernetesEmulator, resource: str, name: str) -> dict[str, Any]:
    return dict(k8s.objects[resource, NS, name])


def status(k8s: kmock.KubernetesEmulator, name: str) -> dict[str, Any]:
    return dict(obj(k8s, FLASHSALES, name).get("status") or {})


def condition(k8s: kmock.KubernetesEmulator, name: str, kind: str) -> dict[str, Any] | None:
    for c in status(k8s, name).get("conditions") or []:
        if c["type"] == kind:
            return c
    return None


def assert_requests_within_rbac(k8s: kmock.KubernetesEmulator) -> set[tuple[str, str, str]]:
    """Every request the operator sent is allowed by operator/rbac.py's rules; returns what
    was used as (group, resource, verb)."""
    verbs = {
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.FETCH: "get",
        kmock.action.CREATE: "create",
        kmock.action.UPDATE: "patch",
        kmock.action.DELETE: "delete",
    }
    used = set()
    for request in k8s:  # every request the server received, in order
        if request.resource is None or request.resource.plural is None:
            continue  # discovery: allowed to every client (system:discovery)
        if request.resource.plural == "flashsales" and request.method in ("POST", "DELETE"):
            continue  # the test itself, as `kubectl apply` / `kubectl delete`
        if (
            request.resource.plural == "horizontalpodautoscalers"
            and request.data
            and request.data.get("spec", {}).get("minReplicas") == 2
            and not request.data.get("metadata")
        ):
            continue  # the test itself, as `helm upgrade`
        resource = request.resource.plural
        if request.subresource:
            resource += f"/{request.subresource}"
        used.add((request.resource.group, resource, verbs[request.action]))
    allowed = rbac.rules()
    for group, resource, verb in sorted(used):
        assert rbac.allows(allowed, group, resource, verb), (group, resource, verb)
    return used


async def test_a_flashsale_from_declaration_to_archive(
    k8s: kmock.KubernetesEmulator, services: Services
) -> None:
    sale_id = f"k-{secrets.token_hex(4)}"
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    # scale-up at +2 s, pre-warm at +4 s, open at +7 s, close at +10 s, scale-down at +12 s
    opens, closes = start + timedelta(seconds=7), start + timedelta(seconds=10)
    spec = spec_for(
        opens,
        closes,
        saleId=sale_id,
        prewarm={"leadSeconds": 3},
        scaling={
            "target": {"kind": "HorizontalPodAutoscaler", "name": "web"},
            "replicas": 8,
            "leadSeconds": 5,
            "cooldownSeconds": 2,
        },
    )
    hpa = lambda: obj(k8s, HPAS, "web")  # noqa: E731

    async with operator(k8s, services.settings):
        await apply(k8s, manifest("spring", spec))

        # the sale exists in PostgreSQL, made by Sales like the admin API would
        sale = await eventually(lambda: _sale(services, sale_id), "the sale is created")
        assert (sale.stock, sale.opens_at, sale.closes_at) == (50, opens, closes)
        assert sale.batch_size == 5 and sale.max_active == 10 and sale.currency == "EUR"
        await eventually(
            lambda: status(k8s, "spring").get("phase") == "Scheduled", "the phase is Scheduled"
        )
        accepted = condition(k8s, "spring", "Accepted")
        assert accepted and accepted["status"] == "True", accepted
        assert not await services.stock.is_warm(sale_id)
        assert hpa()["spec"]["minReplicas"] == 2

        # shoppers join the pre-queue; the status counts them
        for n in range(3):
            await services.room.join(sale_id, f"visitor-{n}", "203.0.113.9")
        await eventually(
            lambda: status(k8s, "spring").get("counters", {}).get("waiting") == 3,
            "status.counters.waiting is 3",
        )

        # the scaling lead: the HPA's minReplicas is raised, its original remembered
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 8, "the HPA is raised")
        assert hpa()["metadata"]["annotations"][ORIGINAL] == "2"
        assert hpa()["metadata"]["annotations"][SCALED_FOR] == "spring"
        assert datetime.now(UTC) < opens

    # the operator restarts in the middle of the window: a new process, no memory
    async with operator(k8s, services.settings):
        # the pre-warm lead: stock is loaded into Redis before the opening
        await eventually(lambda: services.stock.is_warm(sale_id), "the stock is pre-warmed")
        assert datetime.now(UTC) < opens
        await eventually(lambda: status(k8s, "spring").get("phase") == "Warming", "Warming")
        figures = status(k8s, "spring")["counters"]
        assert figures["stock"] == 50 and figures["remaining"] == 50 and figures["sold"] == 0

        await eventually(lambda: status(k8s, "spring").get("phase") == "Open", "Open")
        assert datetime.now(UTC) >= opens

        # a `helm upgrade` resets minReplicas during the window: the next tick raises it again
        async with k8s.patch(
            f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/web",
            json={"spec": {"minReplicas": 2}},
        ) as response:
            assert response.status == 200
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 8, "the HPA is raised again")
        assert hpa()["metadata"]["annotations"][ORIGINAL] == "2"

        await eventually(lambda: status(k8s, "spring").get("phase") == "Closed", "Closed", within=8)
        assert datetime.now(UTC) >= closes
        assert hpa()["spec"]["minReplicas"] == 8  # the cooldown holds the replicas a while

        # after closesAt + cooldown, the HPA is back as it was, annotations gone
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 2, "the HPA is restored")
        assert datetime.now(UTC) >= closes + timedelta(seconds=2)
        assert not {ORIGINAL, APPLIED, SCALED_FOR} & set(hpa()["metadata"]["annotations"])

        final = status(k8s, "spring")
        assert set(final["transitions"]) >= {"Scheduled", "Warming", "Open", "Closed"}
        assert final["observedGeneration"] == 1

        # one Event per phase change, posted by the operator (kmock stores only the first:
        # it does not expand generateName, so the rest answer 409; the requests are recorded)
        reasons = [
            r.data.get("reason") for r in k8s[kmock.resource("v1/events")] if r.method == "POST"
        ]
        for phase in ("Scheduled", "Warming", "Open", "Closed"):
            assert reasons.count(phase) == 1, (phase, reasons)

        # deleting: the finalizer archives the figures and removes the Redis keys
        keys = services.room.keys(sale_id)
        assert await services.redis.exists(keys.meta, keys.inventory) == 2
        async with k8s.delete(flashsale_path("spring")) as response:
            assert response.status == 200
        await eventually(
            lambda: k8s.objects[FLASHSALES, NS, "spring"].deleted, "the FlashSale is gone"
        )
        archive = await services.pool.fetchrow(
            "SELECT figures FROM sale_archive WHERE sale_id = $1", sale_id
        )
        assert archive is not None
        assert [k async for k in services.redis.scan_iter(match=keys.pattern)] == []
        closed = await services.sales.get(sale_id)
        assert closed.closed_at is not None

    assert assert_requests_within_rbac(k8s) >= {
        ("flashsale.io", "flashsales", "watch"),
        ("flashsale.io", "flashsales/status", "patch"),
        ("", "events", "create"),
        ("autoscaling", "horizontalpodautoscalers", "patch"),
    }
    # an HPA is scaled through minReplicas only: the Deployment was never patched
    assert not [r for r in k8s[kmock.resource("apps/v1/deployments")] if r.method == "PATCH"]


async def patch_spec(
    k8s: kmock.KubernetesEmulator, name: str, spec: dict[str, Any], generation: int
) -> None:
    """`kubectl apply` of a changed spec (kmock does not count generations itself)."""
    async with k8s.patch(
        flashsale_path(name), json={"spec": spec, "metadata": {"generation": generation}}
    ) as response:
        assert response.status == 200, await response.text()


async def test_bad_manifests_are_refused_with_what_to_change(
    k8s: kmock.KubernetesEmulator, services: Services
) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    backwards = spec_for(soon, soon - timedelta(minutes=30), saleId=f"k-{secrets.token_hex(4)}")
    both = spec_for(soon, soon + timedelta(hours=1), saleId=f"k-{secrets.token_hex(4)}")
    both["inventory"]["seatMap"] = {
        "sections": [{"name": "Floor", "rows": [{"name": "A", "seats": 10}]}]
    }
    gap = spec_for(soon, soon + timedelta(hours=1), saleId=f"k-{secrets.token_hex(4)}")
    gap["schedule"] = {
        "opensAt": "2027-03-14T02:30:00",
        "closesAt": "2027-03-14T05:00:00",
        "timeZone": "America/New_York",
    }

    async with operator(k8s, services.settings):
        for name, spec in (("backwards", backwards), ("both", both), ("gap", gap)):
            await apply(k8s, manifest(name, spec))
        for name in ("backwards", "both", "gap"):
            await eventually(
                lambda n=name: status(k8s, n).get("phase") == "Invalid", f"{name} is Invalid"
            )
        messages = {}
        for name in ("backwards", "both", "gap"):
            accepted = condition(k8s, name, "Accepted")
            assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
            assert accepted["observedGeneration"] == 1
            messages[name] = accepted["message"]
        assert messages["backwards"].startswith(
            "spec.schedule.closesAt: must be after spec.schedule.opensAt"
        ), messages
        assert messages["both"] == (
            "spec.inventory: give exactly one of quantity (a number of units) or seatMap "
            "(sections of rows of seats), not both"
        )
        assert messages["gap"].startswith(
            "spec.schedule.opensAt: 2027-03-14T02:30:00 does not exist in America/New_York"
        )
        for spec in (backwards, both, gap):  # nothing reached PostgreSQL
            assert await _sale(services, spec["saleId"]) is None
        warnings = [
            r.data
            for r in k8s[kmock.resource("v1/events")]
            if r.method == "POST" and r.data.get("type") == "Warning"
        ]
        assert {w["reason"] for w in warnings} == {"InvalidSpec"}
        assert any(w["message"] == messages["both"] for w in warnings)

        # the person fixes the manifest: accepted, the sale is made
        fixed = dict(
            backwards,
            schedule={**backwards["schedule"], "closesAt": (soon + timedelta(hours=2)).isoformat()},
        )
        await patch_spec(k8s, "backwards", fixed, generation=2)
        await eventually(
            lambda: status(k8s, "backwards").get("phase") == "Scheduled",
            "the fixed FlashSale is Scheduled",
        )
        accepted = condition(k8s, "backwards", "Accepted")
        assert accepted["status"] == "True" and accepted["observedGeneration"] == 2
        assert (await services.sales.get(backwards["saleId"])).closes_at == soon + timedelta(
            hours=2
        )


async def test_changes_the_sale_cannot_take_are_refused_and_the_sale_runs_on(
    k8s: kmock.KubernetesEmulator, services: Services
) -> None:
    sale_id = f"k-{secrets.token_hex(4)}"
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    spec = spec_for(soon, soon + timedelta(hours=1), saleId=sale_id)

    async with operator(k8s, services.settings):
        await apply(k8s, manifest("first", spec))
        await eventually(lambda: status(k8s, "first").get("phase") == "Scheduled", "Scheduled")
        await services.pool.execute(  # 20 units were sold (as the persister would record)
            "UPDATE sale_inventory SET sold = 20 WHERE sale_id = $1", sale_id
        )

        # lowering the stock below what is sold: refused, the sale keeps its 50
        await patch_spec(k8s, "first", dict(spec, inventory={"quantity": 10}), generation=2)
        await eventually(
            lambda: (condition(k8s, "first", "Accepted") or {}).get("reason") == "Refused",
            "the change is refused",
        )
        accepted = condition(k8s, "first", "Accepted")
        assert accepted["message"] == (
            "spec.inventory.quantity: cannot be lower than what is sold or held (20 sold, 0 held)"
        )
        assert accepted["status"] == "False" and accepted["observedGeneration"] == 2
        assert (await services.sales.get(sale_id)).stock == 50
        await asyncio.sleep(3 * TICK)  # ticks go on: the sale runs, the refusal stays visible
        assert status(k8s, "first")["phase"] == "Scheduled"
        assert status(k8s, "first")["counters"]["sold"] == 20
        assert condition(k8s, "first", "Accepted")["reason"] == "Refused"

        # raising it is fine
        await patch_spec(k8s, "first", dict(spec, inventory={"quantity": 80}), generation=3)
        await eventually(
            lambda: status(k8s, "first").get("counters", {}).get("stock") == 80, "the stock is 80"
        )
        assert condition(k8s, "first", "Accepted")["status"] == "True"

        # another FlashSale cannot take over the same sale id
        await apply(k8s, manifest("copy", spec))
        await eventually(lambda: status(k8s, "copy").get("phase") == "Invalid", "copy Invalid")
        assert condition(k8s, "copy", "Accepted")["message"] == (
            f"spec.saleId: sale {sale_id!r} is already managed by FlashSale {NS}/first; set "
            "spec.saleId to another id"
        )


async def test_overlapping_sales_on_one_hpa_the_largest_wish_wins(
    k8s: kmock.KubernetesEmulator, services: Services
) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    window = {"leadSeconds": 3600, "cooldownSeconds": 60}  # both windows are on now
    hpa = lambda: obj(k8s, HPAS, "web")  # noqa: E731

    async with operator(k8s, services.settings):
        for name, replicas in (("small", 5), ("large", 9)):
            await apply(
                k8s,
                manifest(
                    name,
                    spec_for(
                        soon,
                        soon + timedelta(hours=1),
                        saleId=f"k-{secrets.token_hex(4)}",
                        scaling={"target": {"name": "web"}, "replicas": replicas, **window},
                    ),
                ),
            )
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 9, "the largest wish wins")
        await eventually(
            lambda: hpa()["metadata"]["annotations"].get(SCALED_FOR) == "large,small",
            "both sales are named",
        )
        assert hpa()["metadata"]["annotations"][ORIGINAL] == "2"
        for name in ("small", "large"):
            await eventually(
                lambda n=name: (condition(k8s, n, "Scaled") or {}).get("reason") == "ScaledUp",
                f"{name} reports the scaling",
            )

        # a sale that targets the Deployment under the HPA is refused: never fight an HPA
        await apply(
            k8s,
            manifest(
                "direct",
                spec_for(
                    soon,
                    soon + timedelta(hours=1),
                    saleId=f"k-{secrets.token_hex(4)}",
                    scaling={
                        "target": {"kind": "Deployment", "name": "web"},
                        "replicas": 4,
                        **window,
                    },
                ),
            ),
        )
        await eventually(lambda: condition(k8s, "direct", "Scaled"), "direct reports scaling")
        refused = condition(k8s, "direct", "Scaled")
        assert refused["status"] == "False" and refused["reason"] == "ScaledByHPA"
        assert (
            "set spec.scaling.target to kind HorizontalPodAutoscaler, name web"
            in refused["message"]
        )

        # the large sale goes away: the small one's wish remains
        async with k8s.delete(flashsale_path("large")) as response:
            assert response.status == 200
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 5, "the small wish remains")
        assert hpa()["metadata"]["annotations"][SCALED_FOR] == "small"
        # and the last one: the HPA is as it was
        async with k8s.delete(flashsale_path("small")) as response:
            assert response.status == 200
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 2, "the HPA is restored")
        assert not {ORIGINAL, APPLIED, SCALED_FOR} & set(hpa()["metadata"]["annotations"])

    assert not [r for r in k8s[kmock.resource("apps/v1/deployments")] if r.method == "PATCH"]
    assert obj(k8s, DEPLOYMENTS, "web")["spec"]["replicas"] == 2
    assert_requests_within_rbac(k8s)


async def _sale(services: Services, sale_id: str) -> Any:
    from flashsale.waiting_room.sales import SaleNotFound

    try:
        return await services.sales.get(sale_id)
    except SaleNotFound:
        return None
