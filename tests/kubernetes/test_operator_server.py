"""`flashsale operator` against a real kube-apiserver, as its own ServiceAccount with exactly
the chart's RBAC, with real Redis and PostgreSQL: a FlashSale from its declaration to its
archive, the operator killed and restarted in the middle, the HPA raised and put back, Events
and the status subresource read back from the server; the liveness probes; peering.

No controllers run here: the Deployment and HPA are only stored (nothing scales), so what
changes them is the operator alone. Shoppers are admitted and buy through the core (the
fixtures of tests/conftest.py), on the same Redis prefix and PostgreSQL schema as the
operator process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flashsale.config import Settings
from flashsale.operator.handlers import FINALIZER
from flashsale.operator.kube import FIELD_MANAGER
from flashsale.operator.scaling import ANNOTATIONS, HPA, SCALED_FOR
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import Purchases
from flashsale.waiting_room.services import Services
from tests.kubernetes.operator_process import (
    ACCOUNT,
    FLASHSALE,
    TEST_MANAGER,
    Grant,
    Operator,
    async_admin,
    condition,
    create,
    events_of,
    eventually,
    flashsale,
    flashsales,
    get,
    grant,
    hpa_path,
    operator_environment,
    scaled_objects,
    spec_for,
)
from tests.support import REPO, Admit, redis_server
from tests.support.facts import Facts
from tests.support.identity import AUDIENCE, ISSUER, Issuer
from tests.support.kubernetes import ControlPlane, apply, established, wait_for

ORIGINAL, APPLIED = ANNOTATIONS[HPA]
PHASES = ["Scheduled", "Warming", "Open", "SoldOut", "Closed"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="module")
def shop(
    kube: ControlPlane, admin: httpx.Client, flashsale_crd: dict[str, Any], folder: Path
) -> Grant:
    """The chart's operator RBAC for a release in op-system serving op-shop."""
    return grant(kube, admin, folder, "op-system", ["op-shop"])


@pytest.fixture
async def admin_async(kube: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with async_admin(kube) as client:
        yield client


async def test_a_flashsale_from_declaration_to_archive_through_a_restart(
    admin_async: httpx.AsyncClient,
    shop: Grant,
    folder: Path,
    settings: Settings,
    services: Services,
    purchases: Purchases,
    admit: Admit,
    cluster_facts: Facts,
) -> None:
    """A sale from `kubectl apply` to deletion, its operator SIGKILLed while it is open: the
    shoppers sell it out meanwhile, and a new process carries on from what the cluster and
    the stores hold (phase, counters, the raised HPA), telling each phase exactly once."""
    admin, ns = admin_async, shop.served[0]
    for where, obj in scaled_objects(ns):
        await create(admin, where, obj)
    env = operator_environment(settings, shop.kubeconfig, FLASHSALE_OPERATOR_NAMESPACE=ns)
    first = Operator(dict(env), folder / "first.log").start()
    second = Operator(dict(env), folder / "second.log")
    try:
        health = await first.ready()
        assert health["redis"]["ok"] and health["postgresql"]["ok"], health

        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        # HPA raised at +2 s, stock pre-warmed at +5 s, open at +8 s, closed at +20 s, HPA
        # back at +23 s
        opens, closes = start + timedelta(seconds=8), start + timedelta(seconds=20)
        spec = spec_for(
            opens,
            closes,
            prewarm={"leadSeconds": 3},
            scaling={
                "target": {"kind": "HorizontalPodAutoscaler", "name": "web"},
                "replicas": 8,
                "leadSeconds": 6,
                "cooldownSeconds": 3,
            },
        )
        sale_id = spec["saleId"]
        await create(admin, flashsales(ns), flashsale("spring", spec))
        path = flashsales(ns, "spring")

        async def fs() -> dict[str, Any]:
            return await get(admin, path)

        async def hpa() -> dict[str, Any]:
            return await get(admin, hpa_path(ns, "web"))

        async def min_replicas(wanted: int) -> bool:
            return bool((await hpa())["spec"]["minReplicas"] == wanted)

        seen: list[str] = []

        async def phase_is(wanted: str) -> bool:
            phase = ((await fs()).get("status") or {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            return phase == wanted

        await eventually(lambda: phase_is("Scheduled"), "Scheduled", 20)
        body = await fs()
        assert condition(body, "Accepted")["status"] == "True", body
        assert FINALIZER in body["metadata"]["finalizers"]
        sale = await services.sales.get(sale_id)
        assert (sale.stock, sale.opens_at, sale.closes_at) == (12, opens, closes)

        # the scaling lead: minReplicas raised, the original kept on the HPA itself
        await eventually(lambda: min_replicas(8), "the HPA is raised", 20)
        annotations = (await hpa())["metadata"]["annotations"]
        assert (annotations[ORIGINAL], annotations[SCALED_FOR]) == ("2", "spring")
        assert datetime.now(UTC) < opens

        await eventually(lambda: phase_is("Warming"), "Warming", 20)
        assert await services.stock.is_warm(sale_id) and datetime.now(UTC) < opens
        await eventually(lambda: phase_is("Open"), "Open", 20)
        assert datetime.now(UTC) >= opens

        # the operator dies mid-sale (SIGKILL: nothing cleaned up); the shoppers buy
        # everything while no operator runs
        first.kill()
        claims = await admit(sale, 6)
        for claim in claims:
            held = await purchases.hold(sale, claim, quantity=2)
            paid = await purchases.pay(sale, claim.visitor, held.order["id"], "tok_approve")
            assert paid["status"] == "confirmed", paid
        assert (await fs())["status"]["phase"] == "Open"  # nobody updated it meanwhile

        # a new operator process: no memory but what the cluster and the stores hold
        second.start()
        await second.ready()
        await eventually(lambda: phase_is("SoldOut"), "SoldOut after the restart", 20)
        counters = (await fs())["status"]["counters"]
        assert (counters["sold"], counters["remaining"], counters["stock"]) == (12, 0, 12)
        assert await min_replicas(8)  # still raised: the window runs on

        await eventually(lambda: phase_is("Closed"), "Closed", 30)
        assert datetime.now(UTC) >= closes
        await eventually(lambda: min_replicas(2), "the HPA is put back", 20)
        assert datetime.now(UTC) >= closes + timedelta(seconds=3)
        assert not {ORIGINAL, APPLIED, SCALED_FOR} & set(
            (await hpa())["metadata"].get("annotations") or {}
        )
        assert seen == PHASES, seen

        # Events, read back from the server: one per phase change, none repeated by the
        # restart (the new process finds the phase in the status and posts nothing for it)
        events = await events_of(admin, ns, "spring")
        reasons = [e["reason"] for e in events]
        for phase in PHASES:
            assert reasons.count(phase) == 1, (phase, reasons)
        assert reasons.count("Applied") == 1, reasons  # "created"; the resume found it unchanged
        assert all(e["involvedObject"]["kind"] == "FlashSale" for e in events)
        assert {e["type"] for e in events} == {"Normal"}

        # status through the status subresource: the spec was never written by the operator
        body = await fs()
        assert body["metadata"]["generation"] == 1
        assert body["status"]["observedGeneration"] == 1
        assert set(body["status"]["transitions"]) == set(PHASES)
        assert body["spec"] == spec_with_defaults(spec, body["spec"])
        managed = body["metadata"]["managedFields"]
        status_writes = [e for e in managed if e.get("subresource") == "status"]
        object_writes = [e for e in managed if not e.get("subresource")]
        assert status_writes and all(set(e["fieldsV1"]) == {"f:status"} for e in status_writes)
        operator_writes = [e for e in object_writes if e["manager"] != TEST_MANAGER]
        assert operator_writes, managed  # the finalizer and kopf's annotations
        for entry in operator_writes:
            assert set(entry["fieldsV1"]) == {"f:metadata"}, entry
        assert {e["manager"] for e in status_writes} == {FIELD_MANAGER}

        # deletion: once the orders reach PostgreSQL, the finalizer archives and cleans up
        persister = Persister(
            services.redis, services.pool, services.sales, purchases, consumer="k8s-test"
        )
        await persister.drain(sale)
        keys = services.room.keys(sale_id)
        assert await services.redis.exists(keys.meta, keys.inventory) == 2
        assert (await admin.delete(path)).status_code == 200

        async def gone() -> bool:
            return (await admin.get(path)).status_code == 404

        await eventually(gone, "the FlashSale is gone", 20)
        archive = await services.pool.fetchrow(
            "SELECT figures FROM sale_archive WHERE sale_id = $1", sale_id
        )
        assert archive is not None
        figures = json.loads(archive["figures"])
        assert figures["orders"]["confirmed"] == {"orders": 6, "units": 12}
        assert figures["flashsale"]["phase"] == "Closed"
        assert [k async for k in services.redis.scan_iter(match=keys.pattern)] == []

        # the chart's RBAC was enough: no request of either process was refused
        for process in (first, second):
            assert process.forbidden() == [], process.forbidden()
        assert second.stop() == 0
    finally:
        for process in (first, second):
            if process.alive():
                process.kill()
    cluster_facts.record("operator_phases", seen)
    cluster_facts.record("operator_restart_lost_nothing", True)
    cluster_facts.record("rbac_ok", True)


def spec_with_defaults(sent: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """What was sent, plus whatever the CRD's defaults added (the operator adds nothing)."""
    merged = json.loads(json.dumps(stored))
    for key, value in sent.items():
        merged[key] = (
            spec_with_defaults(value, stored.get(key) or {}) if isinstance(value, dict) else value
        )
    return merged


def without(*taken: tuple[str, str]) -> Any:
    """An `edit` for `grant`: the chart's Role with each (resource, verb) taken away."""

    def edit(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Role":
            for resource, verb in taken:
                for rule in obj["rules"]:
                    if resource in rule["resources"]:
                        rule["verbs"] = [v for v in rule["verbs"] if v != verb]
            obj["rules"] = [rule for rule in obj["rules"] if rule["verbs"]]
        return obj

    return edit


async def test_a_permission_the_rbac_lacks_is_seen(
    kube: ControlPlane,
    admin: httpx.Client,
    admin_async: httpx.AsyncClient,
    flashsale_crd: dict[str, Any],
    folder: Path,
    settings: Settings,
    database: None,
) -> None:
    """The signal the test above relies on: take `patch` on HPAs and `create` on Events away
    from the chart's Role, and the operator's log shows the server's refusals (from kopf for
    the Events, from operator/kube.py for the HPA), the Scaled condition says 403, and the
    HPA stays as it was."""
    denied = grant(
        kube,
        admin,
        folder,
        "op-system",
        ["op-denied"],
        edit=without(("events", "create"), ("horizontalpodautoscalers", "patch")),
    )
    ns = denied.served[0]
    for where, obj in scaled_objects(ns):
        await create(admin_async, where, obj)
    env = operator_environment(settings, denied.kubeconfig, FLASHSALE_OPERATOR_NAMESPACE=ns)
    operator = Operator(env, folder / "denied.log").start()
    try:
        await operator.ready()
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
        spec = spec_for(
            soon,
            soon + timedelta(hours=1),
            scaling={"target": {"name": "web"}, "replicas": 5, "leadSeconds": 3600},
        )
        await create(admin_async, flashsales(ns), flashsale("denied", spec))

        async def scaled() -> dict[str, Any]:
            return condition(await get(admin_async, flashsales(ns, "denied")), "Scaled")

        refused = await eventually(scaled, "the Scaled condition", 30)
        assert refused["status"] == "False" and refused["reason"] == "PatchFailed", refused
        assert "HTTP 403" in refused["message"], refused
        hpa = await get(admin_async, hpa_path(ns, "web"))
        assert hpa["spec"]["minReplicas"] == 2
        await eventually(
            lambda: any("events" in line for line in operator.forbidden()),
            "kopf logs the refused Event",
            30,
        )
        lines = operator.forbidden()
        account = f"system:serviceaccount:{denied.release_namespace}:{ACCOUNT}"
        assert any("horizontalpodautoscalers" in line and account in line for line in lines)
        assert any(
            'cannot create resource \\"events\\"' in line
            or 'cannot create resource "events"' in line
            for line in lines
        ), lines
        assert await events_of(admin_async, ns, "denied") == []
        assert (await admin_async.delete(flashsales(ns, "denied"))).status_code == 200
    finally:
        operator.stop()


async def test_liveness_reports_a_redis_outage_without_failing(
    kube: ControlPlane,
    admin: httpx.Client,
    flashsale_crd: dict[str, Any],
    folder: Path,
    settings: Settings,
    database: None,
    cluster_facts: Facts,
) -> None:
    """The operator's /healthz (kopf's liveness endpoint) carries the probes of Redis and
    PostgreSQL. A Redis that stops answering shows there, within the probe's own timeout,
    and the endpoint still answers 200: restarting the operator would not bring Redis back
    (operator/health.py). When Redis answers again, so does the probe, with no restart."""
    probe = grant(kube, admin, folder, "op-system", ["op-probe"])
    with redis_server(folder) as redis:
        env = operator_environment(
            settings,
            probe.kubeconfig,
            FLASHSALE_OPERATOR_NAMESPACE=probe.served[0],
            REDIS_URL=redis.url,
        )
        operator = Operator(env, folder / "probe.log").start()
        try:
            health = await operator.ready()
            assert health["redis"]["ok"] is True and health["postgresql"]["ok"] is True, health
            redis.proc.send_signal(signal.SIGSTOP)  # silent: connections open, no answers

            def redis_down() -> dict[str, Any] | None:
                started = time.monotonic()
                answer = operator.health()
                took = time.monotonic() - started
                assert answer is not None and answer[0] == 200, answer
                assert took < 5, f"/healthz took {took:.1f} s, beyond the chart's timeoutSeconds"
                return answer[1] if not answer[1]["redis"]["ok"] else None

            # kopf keeps probe results for 10 s: the outage shows within that and a probe
            down = await eventually(redis_down, "/healthz reports Redis down", 30)
            assert down["redis"] == {"ok": False, "error": "timed out"}, down
            assert down["postgresql"]["ok"] is True, down
            assert operator.alive()

            redis.proc.send_signal(signal.SIGCONT)

            def redis_back() -> bool:
                answer = operator.health()
                return bool(answer and answer[0] == 200 and answer[1]["redis"]["ok"])

            await eventually(redis_back, "/healthz reports Redis back", 30)
            assert operator.alive()
            assert any(
                e.get("msg") == "Redis does not answer the liveness probe"
                for e in operator.entries()
            )
        finally:
            assert operator.stop() == 0, operator.tail()
    cluster_facts.record("operator_liveness_survives_redis_outage", True)


async def test_peering_the_highest_priority_acts(
    kube: ControlPlane,
    admin: httpx.Client,
    admin_async: httpx.AsyncClient,
    flashsale_crd: dict[str, Any],
    folder: Path,
    settings: Settings,
    database: None,
    cluster_facts: Facts,
) -> None:
    """FLASHSALE_OPERATOR_PEERING with the chart's peering objects and RBAC: an operator that
    finds no peering object stops at once with one line; two operators share the KopfPeering,
    the one of lower priority pauses while the higher one runs and resumes when it leaves."""
    for crd in yaml.safe_load_all((REPO / "charts/flashsale/crds/kopf-peering.yaml").read_text()):
        answer = apply(
            admin,
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
            crd,
        )
        assert answer.status_code in (200, 201), answer.text
        wait_for("Established", lambda n=crd["metadata"]["name"]: established(admin, n))
    peer = grant(kube, admin, folder, "op-peer-system", ["op-peer"], peering=True)
    ns = peer.served[0]
    peering_objects = [o for o in peer.objects if o["kind"] == "KopfPeering"]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in peering_objects] == [
        (ns, "flashsale")
    ]
    base = operator_environment(
        settings,
        peer.kubeconfig,
        FLASHSALE_OPERATOR_NAMESPACE=ns,
        FLASHSALE_OPERATOR_PEERING="flashsale",
    )

    missing = await asyncio.create_subprocess_exec(
        FLASHSALE,
        "operator",
        env={**base, "FLASHSALE_OPERATOR_PEERING": "nosuch", "FLASHSALE_OPERATOR_LIVENESS": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(missing.communicate(), 60)
    assert (missing.returncode, err.decode().splitlines()) == (
        7,
        [
            f"flashsale: FLASHSALE_OPERATOR_PEERING=nosuch but there is no KopfPeering "
            f"{ns}/nosuch (kopf would pause the operator until one appears); create it and "
            "kopf's peering CRDs (the chart does with operator.peering.enabled) or unset "
            "FLASHSALE_OPERATOR_PEERING"
        ],
    ), err

    # POD_ID, as the chart sets it from metadata.name: kopf's identity in the peering records
    low = Operator(
        {**base, "FLASHSALE_OPERATOR_PRIORITY": "0", "POD_ID": "flashsale-operator-low"},
        folder / "peer-low.log",
    ).start()
    high = Operator(
        {**base, "FLASHSALE_OPERATOR_PRIORITY": "10", "POD_ID": "flashsale-operator-high"},
        folder / "peer-high.log",
    )
    try:
        await low.ready()

        async def peers() -> dict[str, Any]:
            found = await get(
                admin_async, f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/flashsale"
            )
            return dict(found.get("status") or {})

        async def priorities() -> list[int]:
            return sorted(int(p["priority"]) for p in (await peers()).values() if p.get("lifetime"))

        async def only_low() -> bool:
            return await priorities() == [0]

        await eventually(only_low, "the low one keeps its record", 30)
        high.start()
        await high.ready()
        await eventually(
            lambda: any(
                "Pausing operations in favour of" in e.get("msg", "") for e in low.entries()
            ),
            "the low one pauses",
            30,
        )
        assert await priorities() == [0, 10]
        live = {name for name, peer in (await peers()).items() if peer and peer.get("lifetime")}
        assert live == {"flashsale-operator-low", "flashsale-operator-high"}, await peers()

        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        await create(
            admin_async,
            flashsales(ns),
            flashsale("peered", spec_for(soon, soon + timedelta(hours=1))),
        )

        async def phase() -> str | None:
            return ((await get(admin_async, flashsales(ns, "peered"))).get("status") or {}).get(
                "phase"
            )

        async def scheduled() -> bool:
            return await phase() == "Scheduled"

        await eventually(scheduled, "the high one handles it", 30)
        assert any("apply-created" in line for line in high.lines())
        assert not any("apply-created" in line for line in low.lines())

        assert high.stop() == 0  # a clean exit takes its record out of the peering
        await eventually(
            lambda: any("Resuming operations" in e.get("msg", "") for e in low.entries()),
            "the low one resumes",
            30,
        )
        assert (await admin_async.delete(flashsales(ns, "peered"))).status_code == 200

        async def gone() -> bool:
            return (await admin_async.get(flashsales(ns, "peered"))).status_code == 404

        await eventually(gone, "the low one archives the deleted FlashSale", 30)
        for process in (low, high):
            assert process.forbidden() == [], process.forbidden()
    finally:
        for process in (low, high):
            if process.alive():
                process.stop()
    cluster_facts.record("operator_peering_priorities_ok", True)


@pytest.fixture(scope="module")
def rules_operator(
    kube: ControlPlane,
    admin: httpx.Client,
    flashsale_crd: dict[str, Any],
    folder: Path,
    settings: Settings,
    database: None,
) -> Iterator[Operator]:
    """One operator process serving op-rules, for the tests of what it refuses and of sales
    sharing a target; its log must hold no refusal of RBAC when they are done."""
    granted = grant(kube, admin, folder, "op-system", ["op-rules"])
    ns = granted.served[0]
    for where, obj in scaled_objects(ns):
        answer = admin.post(where, json=obj, params={"fieldManager": TEST_MANAGER})
        assert answer.status_code == 201, answer.text
    env = operator_environment(settings, granted.kubeconfig, FLASHSALE_OPERATOR_NAMESPACE=ns)
    operator = Operator(env, folder / "rules.log").start()
    try:
        wait_for("the operator answers /healthz", lambda: (operator.health() or (0,))[0] == 200)
        yield operator
        assert operator.forbidden() == [], operator.forbidden()
    finally:
        assert operator.stop() == 0, operator.tail()


async def test_specs_the_server_accepts_but_the_sale_cannot_take(
    admin_async: httpx.AsyncClient, rules_operator: Operator, services: Services
) -> None:
    """What the CRD's schema cannot judge, the operator refuses with the field and the
    reason, in the Accepted condition and a Warning Event: a wall-clock time the clocks skip,
    a wall-clock close before an opening with an offset, lowering the stock below what is
    sold, a second FlashSale for a sale id already managed. A refused change leaves the sale
    running as it was; a fixed manifest is accepted (a real generation, observed)."""
    admin, ns = admin_async, "op-rules"
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    gap = spec_for(soon, soon + timedelta(hours=1))
    gap["schedule"] = {
        "opensAt": "2027-03-14T02:30:00",
        "closesAt": "2027-03-14T05:00:00",
        "timeZone": "America/New_York",
    }
    backwards = spec_for(soon, soon + timedelta(hours=1))
    backwards["schedule"] = {
        "opensAt": "2027-03-14T12:00:00+00:00",
        "closesAt": "2027-03-14T06:00:00",  # 10:00 UTC in New York: before the opening
        "timeZone": "America/New_York",
    }
    running = spec_for(soon, soon + timedelta(hours=1), inventory={"quantity": 50})
    for name, spec in (("gap", gap), ("backwards", backwards), ("running", running)):
        await create(admin, flashsales(ns), flashsale(name, spec))

    async def accepted(name: str, generation: int) -> dict[str, Any] | None:
        found = condition(await get(admin, flashsales(ns, name)), "Accepted")
        return found if found.get("observedGeneration") == generation else None

    gap_refused = await eventually(lambda: accepted("gap", 1), "gap is judged")
    assert gap_refused["status"] == "False" and gap_refused["reason"] == "InvalidSpec"
    assert gap_refused["message"].startswith(
        "spec.schedule.opensAt: 2027-03-14T02:30:00 does not exist in America/New_York"
    ), gap_refused
    backwards_refused = await eventually(lambda: accepted("backwards", 1), "backwards is judged")
    assert backwards_refused["message"].startswith(
        "spec.schedule.closesAt: must be after spec.schedule.opensAt"
    ), backwards_refused
    for name in ("gap", "backwards"):
        body = await get(admin, flashsales(ns, name))
        assert body["status"]["phase"] == "Invalid", body["status"]
        warnings = [e for e in await events_of(admin, ns, name) if e["type"] == "Warning"]
        assert [e["reason"] for e in warnings] == ["InvalidSpec"], warnings
    for spec in (gap, backwards):  # nothing reached PostgreSQL
        assert await _sale(services, spec["saleId"]) is None

    # the person adds the offset: accepted, the sale is made (generation 2, observed)
    fixed = {**gap["schedule"], "opensAt": "2027-03-14T03:30:00", "closesAt": "2027-03-14T05:00:00"}
    await merge(admin, flashsales(ns, "gap"), {"spec": {"schedule": fixed}})
    now_accepted = await eventually(lambda: accepted("gap", 2), "the fixed gap is judged")
    assert now_accepted["status"] == "True", now_accepted
    sale = await services.sales.get(gap["saleId"])
    assert sale.opens_at == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)  # 03:30 EDT

    # lowering the stock below what is sold: refused, the sale keeps its 50
    await eventually(lambda: accepted("running", 1), "running is accepted")
    await services.pool.execute(
        "UPDATE sale_inventory SET sold = 20 WHERE sale_id = $1", running["saleId"]
    )
    await merge(admin, flashsales(ns, "running"), {"spec": {"inventory": {"quantity": 10}}})
    lowered = await eventually(lambda: accepted("running", 2), "the lowering is judged")
    assert (lowered["status"], lowered["reason"]) == ("False", "Refused"), lowered
    assert lowered["message"] == (
        "spec.inventory.quantity: cannot be lower than what is sold or held (20 sold, 0 held)"
    )
    assert (await services.sales.get(running["saleId"])).stock == 50

    async def runs_on() -> bool:  # the ticks go on: the sale runs, the refusal stays shown
        found = (await get(admin, flashsales(ns, "running"))).get("status") or {}
        return found.get("phase") == "Scheduled" and found.get("counters", {}).get("sold") == 20

    await eventually(runs_on, "the sale runs on with its 20 sold")
    assert condition(await get(admin, flashsales(ns, "running")), "Accepted") == lowered

    # another FlashSale may not take the same sale over
    await create(admin, flashsales(ns), flashsale("copy", running))
    copied = await eventually(lambda: accepted("copy", 1), "the copy is judged")
    assert copied["message"] == (
        f"spec.saleId: sale {running['saleId']!r} is already managed by FlashSale "
        f"{ns}/running; set spec.saleId to another id"
    )
    for name in ("gap", "backwards", "running", "copy"):
        assert (await admin.delete(flashsales(ns, name))).status_code == 200
    for name in ("gap", "backwards", "running", "copy"):
        await eventually(lambda n=name: _gone(admin, flashsales(ns, n)), f"{name} is gone")


async def test_sales_sharing_an_hpa_the_largest_wish_wins(
    admin_async: httpx.AsyncClient, rules_operator: Operator
) -> None:
    """Two FlashSales raise the same HPA: the largest wish wins and both are named; a sale
    naming the Deployment under the HPA is refused (never fight an HPA); as they go away the
    remaining wish holds, then the HPA is as it was. The Deployment is never written."""
    admin, ns = admin_async, "op-rules"
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    window = {"leadSeconds": 3600, "cooldownSeconds": 60}  # on now

    async def hpa() -> dict[str, Any]:
        return await get(admin, hpa_path(ns, "web"))

    for name, replicas in (("small", 5), ("large", 9)):
        spec = spec_for(soon, soon + timedelta(hours=1))
        spec["scaling"] = {"target": {"name": "web"}, "replicas": replicas, **window}
        await create(admin, flashsales(ns), flashsale(name, spec))

    async def named(replicas: int, wishers: str) -> bool:
        found = await hpa()
        annotations = found["metadata"].get("annotations") or {}
        return bool(
            found["spec"]["minReplicas"] == replicas and annotations.get(SCALED_FOR) == wishers
        )

    await eventually(lambda: named(9, "large,small"), "the largest wish wins")
    assert (await hpa())["metadata"]["annotations"][ORIGINAL] == "2"

    direct = spec_for(soon, soon + timedelta(hours=1))
    direct["scaling"] = {"target": {"kind": "Deployment", "name": "web"}, "replicas": 4, **window}
    await create(admin, flashsales(ns), flashsale("direct", direct))

    async def refused() -> dict[str, Any]:
        return condition(await get(admin, flashsales(ns, "direct")), "Scaled")

    scaled = await eventually(refused, "direct reports on its scaling")
    assert (scaled["status"], scaled["reason"]) == ("False", "ScaledByHPA"), scaled
    assert "set spec.scaling.target to kind HorizontalPodAutoscaler, name web" in scaled["message"]

    assert (await admin.delete(flashsales(ns, "large"))).status_code == 200
    await eventually(lambda: named(5, "small"), "the small wish remains")
    assert (await admin.delete(flashsales(ns, "small"))).status_code == 200

    async def restored() -> bool:
        found = await hpa()
        left = set(found["metadata"].get("annotations") or {}) & {ORIGINAL, APPLIED, SCALED_FOR}
        return bool(found["spec"]["minReplicas"] == 2 and not left)

    await eventually(restored, "the HPA is as it was")
    assert (await admin.delete(flashsales(ns, "direct"))).status_code == 200
    deployment = await get(admin, f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    managers = {e["manager"] for e in deployment["metadata"]["managedFields"]}
    assert FIELD_MANAGER not in managers, managers
    assert deployment["spec"]["replicas"] == 1  # the server's default, untouched


async def merge(admin: httpx.AsyncClient, path: str, patch: dict[str, Any]) -> None:
    """`kubectl patch --type merge`: the server counts a new generation."""
    answer = await admin.patch(
        path,
        content=json.dumps(patch),
        headers={"Content-Type": "application/merge-patch+json"},
        params={"fieldManager": TEST_MANAGER},
    )
    assert answer.status_code == 200, answer.text


async def _gone(admin: httpx.AsyncClient, path: str) -> bool:
    return (await admin.get(path)).status_code == 404


async def _sale(services: Services, sale_id: str) -> Any:
    from flashsale.waiting_room.sales import SaleNotFound

    try:
        return await services.sales.get(sale_id)
    except SaleNotFound:
        return None


async def test_a_sale_requiring_identity_needs_an_identity_provider(
    admin_async: httpx.AsyncClient, rules_operator: Operator, services: Services
) -> None:
    """The server accepts spec.shoppers.identityRequired; an operator whose install has no
    identity provider refuses it with the field and what to set, and makes no sale."""
    admin, ns = admin_async, "op-rules"
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    spec = spec_for(soon, soon + timedelta(hours=1), shoppers={"identityRequired": True})
    await create(admin, flashsales(ns), flashsale("gated", spec))

    async def judged() -> dict[str, Any]:
        return condition(await get(admin, flashsales(ns, "gated")), "Accepted")

    refused = await eventually(judged, "gated is judged")
    assert (refused["status"], refused["reason"]) == ("False", "Refused"), refused
    assert refused["message"] == (
        "spec.shoppers.identityRequired: this install has no identity provider: set "
        "FLASHSALE_IDENTITY_JWKS_URL (or _FILE), FLASHSALE_IDENTITY_ISSUER and "
        "FLASHSALE_IDENTITY_AUDIENCE"
    )
    assert await _sale(services, spec["saleId"]) is None
    assert (await admin.delete(flashsales(ns, "gated"))).status_code == 200
    await eventually(lambda: _gone(admin, flashsales(ns, "gated")), "gated is gone")


async def test_who_may_take_a_place_reaches_the_sale(
    kube: ControlPlane,
    admin: httpx.Client,
    admin_async: httpx.AsyncClient,
    flashsale_crd: dict[str, Any],
    folder: Path,
    settings: Settings,
    services: Services,
    cluster_facts: Facts,
) -> None:
    """spec.shoppers through an operator whose install has an identity provider (a JWKS file,
    an issuer and an audience, as the chart's identity values set them): identity required
    and a proof of work of 22 bits become the sales' settings; removing spec.shoppers from
    the manifest turns the proof of work off (the server defaults it to disabled)."""
    granted = grant(kube, admin, folder, "op-system", ["op-shoppers"])
    ns = granted.served[0]
    issuer = Issuer()
    issuer.new_key("shop-1")
    env = operator_environment(
        settings,
        granted.kubeconfig,
        FLASHSALE_OPERATOR_NAMESPACE=ns,
        FLASHSALE_IDENTITY_JWKS_FILE=str(issuer.write(folder / "jwks.json")),
        FLASHSALE_IDENTITY_ISSUER=ISSUER,
        FLASHSALE_IDENTITY_AUDIENCE=AUDIENCE,
    )
    operator = Operator(env, folder / "shoppers.log").start()
    try:
        await operator.ready()
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        signed = spec_for(soon, soon + timedelta(hours=1), shoppers={"identityRequired": True})
        priced = spec_for(
            soon,
            soon + timedelta(hours=1),
            shoppers={"proofOfWork": {"enabled": True, "difficulty": 22}},
        )
        for name, spec in (("signed", signed), ("priced", priced)):
            await create(admin_async, flashsales(ns), flashsale(name, spec))

        async def accepted(name: str, generation: int) -> dict[str, Any] | None:
            found = condition(await get(admin_async, flashsales(ns, name)), "Accepted")
            return found if found.get("observedGeneration") == generation else None

        for name in ("signed", "priced"):
            judged = await eventually(lambda n=name: accepted(n, 1), f"{name} is judged")
            assert judged["status"] == "True", judged
        sale = await services.sales.get(signed["saleId"])
        assert (sale.identity_required, sale.pow_difficulty) == (True, 0)
        sale = await services.sales.get(priced["saleId"])
        assert (sale.identity_required, sale.pow_difficulty) == (False, 22)

        remove = {"spec": {"shoppers": None}}
        await merge(admin_async, flashsales(ns, "priced"), remove)
        stored = (await get(admin_async, flashsales(ns, "priced")))["spec"]["shoppers"]
        assert stored["proofOfWork"]["enabled"] is False, stored
        judged = await eventually(lambda: accepted("priced", 2), "the change is judged")
        assert judged["status"] == "True", judged
        assert (await services.sales.get(priced["saleId"])).pow_difficulty == 0
        for name in ("signed", "priced"):
            assert (await admin_async.delete(flashsales(ns, name))).status_code == 200
        for name in ("signed", "priced"):
            await eventually(
                lambda n=name: _gone(admin_async, flashsales(ns, n)), f"{name} is gone"
            )
        assert operator.forbidden() == [], operator.forbidden()
    finally:
        assert operator.stop() == 0, operator.tail()
    cluster_facts.record("operator_maps_shoppers", True)
