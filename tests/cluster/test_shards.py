"""Sales spread over a real Redis Cluster: each sale's hot path goes to its own primary over
one pipelined connection per primary, and a shard that is down or silent stops only its own
sales in the admitter and the persister (counted per sale), never the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import REGISTRY

from flashsale.config import Settings
from flashsale.waiting_room.admitter import Admitter
from flashsale.waiting_room.autopipeline import ClusterAutoPipeline
from flashsale.waiting_room.isolation import PATIENCE_S
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.redis_client import node_of, primaries
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Signer
from tests.support import Clock, make_admit, only, sale_body
from tests.support.cluster import (
    command_stat,
    private_cluster,
    sale_id_on,
    services_on,
    shared_cluster_url,
)


def failures(role: str, sale: Sale) -> float:
    return (
        REGISTRY.get_sample_value("flashsale_sale_failures_total", {"role": role, "sale": sale.id})
        or 0.0
    )


async def one_per_primary(services: Services, **body: object) -> list[Sale]:
    """A sale on each primary, in the primaries' order."""
    return [
        await services.sales.create(sale_body(id=await sale_id_on(services, node), **body))
        for node in await primaries(services.redis)
    ]


async def until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not within the time given"
        await asyncio.sleep(0.1)


async def test_sales_on_every_primary_each_sell_on_their_own_node(
    settings: Settings, pool: asyncpg.Pool, clock: Clock, signer: Signer
) -> None:
    async with services_on(shared_cluster_url(), settings, pool, clock) as services:
        nodes = await primaries(services.redis)
        assert len(nodes) == 3
        sales = await one_per_primary(services, stock=10, per_shopper_limit=1)
        keys = [services.room.keys(sale.id).meta for sale in sales]
        assert [await node_of(services.redis, key) for key in keys] == nodes
        assert len({services.redis.keyslot(key) for key in keys}) == 3
        ran = {node: await command_stat(node, "evalsha") for node in nodes}

        admit = make_admit(services.room, clock, signer)
        for sale in sales:
            shoppers = await admit(sale, 3)
            held = [await services.purchases.hold(sale, c, quantity=1) for c in shoppers]
            await services.purchases.pay(
                sale, shoppers[0].visitor, held[0].order["id"], "tok_approve"
            )
        persister = Persister(
            services.redis,
            pool,
            only(services.sales, *(s.id for s in sales)),
            services.purchases,
            consumer="shards",
        )
        for sale in sales:
            assert await persister.drain(sale) >= 3
            rows = await pool.fetch(
                "SELECT status, count(*) AS n FROM orders WHERE sale_id = $1 GROUP BY status",
                sale.id,
            )
            assert {r["status"]: r["n"] for r in rows} == {"confirmed": 1, "held": 2}
            assert (await services.stock.reconcile(sale)).ok

        # every sale's scripts ran on its own primary, over one connection per primary
        for node in nodes:
            assert await command_stat(node, "evalsha") > ran[node]
        pipeline = services.room.scripts.pipeline()
        assert isinstance(pipeline, ClusterAutoPipeline)
        assert {f"{host}:{port}" for host, port in pipeline._nodes} == set(nodes)


async def test_a_shard_down_or_silent_stops_only_its_own_sales(
    settings: Settings, pool: asyncpg.Pool, clock: Clock, signer: Signer
) -> None:
    """One shard at a time (a cluster whose majority of primaries is gone stops serving
    altogether, by design): paused (SIGSTOP: it answers nothing), then killed."""
    with private_cluster() as cluster:
        async with services_on(
            cluster.url, settings, pool, clock, redis_command_timeout_seconds=1.0
        ) as services:
            nodes = await primaries(services.redis)
            admission = {**sale_body()["admission"], "batch_size": 5}
            every = await one_per_primary(services, stock=50, admission=admission)
            _, silent, down = every
            ids = [s.id for s in every]
            clock.advance(3601)  # the sales open in an hour: the waiters join after it
            for sale in every:
                for n in range(30):
                    joined = await services.room.join(sale.id, f"w{n}", "198.51.100.1")
                    assert joined.outcome == "ok"
            admitter = Admitter(
                only(services.sales, *ids),
                services.room,
                services.stock,
                tick_ms=10,
                refresh_seconds=0,
                prewarm_lead_seconds=7200,
                gauges_every_seconds=0,
                sale_timeout_seconds=3.0,
            )
            persister = Persister(
                services.redis,
                pool,
                only(services.sales, *ids),
                services.purchases,
                consumer="isolated",
                sale_timeout_seconds=3.0,
            )

            async def admitted(sale: Sale) -> int:
                return (await services.room.counters(sale.id)).admitted_total

            async def dead_letters(sale: Sale) -> int:
                return int(await services.redis.xlen(services.room.keys(sale.id).dead_letters))

            roles = ("admitter", "persister")

            async def broken(sale: Sale, node: str, kill: bool) -> None:
                """Break the sale's shard; the other sales go on, this one is counted."""
                healthy = [s for s in every if s is not sale]
                for each in every:  # an entry for the persister to handle (a dead letter)
                    await services.redis.xadd(services.room.keys(each.id).orders_stream, {"x": 1})
                before = {s.id: (await admitted(s), await dead_letters(s)) for s in healthy}
                counted = {(r, s.id): failures(r, s) for r in roles for s in every}
                port = cluster.port_of(node)
                (cluster.kill if kill else cluster.pause)(port)
                try:
                    # the loops never wait for the broken shard's sale (a healthy one may wait
                    # for a slot-map refresh, a command timeout at most), and the healthy
                    # sales go on being admitted and having their orders handled

                    async def others_go_on() -> bool:
                        clock.advance(0.1)
                        for loop in (admitter, persister):
                            started = time.monotonic()
                            await loop.step()
                            assert time.monotonic() - started < PATIENCE_S + 0.5
                        now = {s.id: (await admitted(s), await dead_letters(s)) for s in healthy}
                        return all(
                            now[s][0] >= before[s][0] + 5 and now[s][1] > before[s][1] for s in now
                        )

                    async def counted_per_sale() -> bool:
                        return all(failures(r, sale) > counted[(r, sale.id)] for r in roles)

                    await until(others_go_on, within=20)
                    await until(counted_per_sale, within=15)  # logged and counted, per sale
                    assert all(failures(r, s) == counted[(r, s.id)] for r in roles for s in healthy)
                finally:
                    if not kill:
                        cluster.resume(port)

            await broken(silent, nodes[1], kill=False)

            async def admits_again() -> bool:  # the paused shard is back
                clock.advance(0.1)
                await admitter.step()
                return await admitted(silent) > 0

            await until(admits_again, within=15)
            await broken(down, nodes[2], kill=True)
            await admitter.per_sale.close()
            await persister.close()
