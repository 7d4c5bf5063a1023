"""A primary killed (kill -9) mid-sale on a 3-primary, 3-replica Redis Cluster: its replica
is promoted, the hot path follows it, and nothing is oversold.

Redis replicates asynchronously, so the last writes the dead primary acknowledged may never
reach its replica: a hold or a payment's mark may be forgotten by Redis. PostgreSQL is the
final guard: whatever Redis believes, it never records more than the stock, and every
shopper told "confirmed" has a confirmed order there. What shoppers see meanwhile: the
sale's requests answer 503 with Retry-After until the replica takes over (a few seconds);
retried with the same Idempotency-Key, a hold is never made twice; the other shards' sales
never notice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx

from flashsale.config import Settings
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.redis_client import primaries
from flashsale.waiting_room.tokens import Claims, Signer
from tests.support import Clock, app_for, make_admit, only, sale_body
from tests.support.cluster import private_cluster, sale_id_on, services_on

SHOPPERS = 80
STOCK = 60


def replicas_of(nodes: list[str], primary: str) -> set[str]:
    """The ids of `primary`'s replicas, from CLUSTER NODES lines."""
    return {line.split()[0] for line in nodes if line.split()[3] == primary}


async def test_a_primary_killed_mid_sale_its_replica_takes_over_and_nothing_is_oversold(
    settings: Settings, pool: asyncpg.Pool, clock: Clock, signer: Signer
) -> None:
    with private_cluster(masters=3, replicas=1) as cluster:
        async with services_on(
            cluster.url, settings, pool, clock, redis_command_timeout_seconds=2.0
        ) as services:
            nodes = await primaries(services.redis)
            victim = nodes[1]
            sale = await services.sales.create(
                sale_body(
                    id=await sale_id_on(services, victim),
                    stock=STOCK,
                    per_shopper_limit=1,
                    hold_seconds=300,
                    admission={**sale_body()["admission"], "batch_size": 100, "max_active": 200},
                )
            )
            shoppers = await make_admit(services.room, clock, signer)(sale, SHOPPERS)
            await services.stock.prewarm(sale)
            replicas = replicas_of(
                cluster.cli(cluster.ports[0], "cluster", "nodes").splitlines(),
                cluster.node_id(cluster.port_of(victim)),
            )
            assert replicas, "the victim has a replica to promote"

            stop = asyncio.Event()
            persister = Persister(
                services.redis,
                pool,
                only(services.sales, sale.id),
                services.purchases,
                consumer="failover",
                sweep_interval_ms=60_000,
            )
            persisting = asyncio.create_task(persister.run(stop))
            answers: Counter[tuple[str, int]] = Counter()
            held_at: list[float] = []
            told_confirmed: set[str] = set()
            transport = httpx.ASGITransport(app=app_for(services), client=("203.0.113.9", 4000))

            async def shopper(http: httpx.AsyncClient, claims: Claims, delay: float) -> None:
                await asyncio.sleep(delay)
                headers = {
                    "Authorization": f"Bearer {signer.sign(claims)}",
                    "Idempotency-Key": f"k-{claims.visitor}",
                }
                for _ in range(60):  # as a browser would: again after Retry-After
                    asked = time.monotonic()
                    hold = await http.post(
                        f"/api/sales/{sale.id}/holds", json={"quantity": 1}, headers=headers
                    )
                    answers[("hold", hold.status_code)] += 1
                    if hold.status_code != 503:
                        break
                    assert hold.headers["retry-after"] == "1"
                    await asyncio.sleep(0.2)
                if hold.status_code not in (200, 201):
                    return
                held_at.append(asked)
                order = hold.json()["id"]
                for _ in range(60):
                    paid = await http.post(
                        f"/api/sales/{sale.id}/orders/{order}/pay",
                        json={"payment_token": "tok_approve"},
                        headers={"X-Visitor-Id": claims.visitor},
                    )
                    answers[("pay", paid.status_code)] += 1
                    if paid.status_code != 503:
                        break
                    await asyncio.sleep(0.2)
                if paid.status_code == 200 and paid.json()["status"] == "confirmed":
                    told_confirmed.add(order)

            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                crowd = [
                    asyncio.create_task(shopper(http, claims, n * 0.1))
                    for n, claims in enumerate(shoppers)
                ]
                try:
                    await asyncio.sleep(1.5)
                    cluster.kill(cluster.port_of(victim))
                    killed_at = time.monotonic()
                    survivor = cluster.port_of(nodes[0])
                    await asyncio.to_thread(
                        cluster.wait,
                        20,
                        lambda: any(
                            "master" in line.split()[2]
                            for line in cluster.cli(survivor, "cluster", "nodes").splitlines()
                            if line.split()[0] in replicas
                        ),
                    )
                    promoted_at = time.monotonic()
                    await asyncio.gather(*crowd)
                finally:
                    for task in crowd:
                        task.cancel()
                    await asyncio.gather(*crowd, return_exceptions=True)
            # the persister writes every order Redis still knows of
            deadline = time.monotonic() + 30
            while True:
                backlog = await services.stock.stream_backlog(sale.id)
                if backlog["lag"] + backlog["pending"] == 0:
                    break
                assert time.monotonic() < deadline, backlog
                await asyncio.sleep(0.2)
            stop.set()
            await persisting

            # shoppers got answers, never a 500; the hot path followed the promoted replica
            assert not [a for a in answers if a[1] >= 500 and a[1] != 503], answers
            assert all(a[1] in (200, 201, 404, 409, 410, 503) for a in answers), answers
            assert [t for t in held_at if t > promoted_at], (answers, killed_at, promoted_at)
            # PostgreSQL: never more than the stock, and every "confirmed" told is recorded
            inventory = await pool.fetchrow(
                "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
            )
            assert inventory["held"] + inventory["sold"] <= inventory["stock"] == STOCK
            rows = await pool.fetch(
                "SELECT id::text AS id, status, quantity FROM orders WHERE sale_id = $1", sale.id
            )
            confirmed = {r["id"] for r in rows if r["status"] == "confirmed"}
            assert sum(r["quantity"] for r in rows if r["status"] in ("held", "confirmed")) <= STOCK
            assert told_confirmed <= confirmed
            assert len(confirmed) == inventory["sold"]
            summary: dict[str, Any] = {
                "answers": dict(answers),
                "told_confirmed": len(told_confirmed),
                "confirmed_in_postgres": len(confirmed),
                "promoted_after_s": round(promoted_at - killed_at, 1),
            }
            print(summary)
