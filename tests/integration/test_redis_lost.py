"""Redis loses a sale's state (a restart without persistence, a failover): PostgreSQL still
refuses any oversell, and `reconcile --repair` brings the sale back. Found by the chaos run
(`make chaos`, fault `redis-kill9-no-persistence`): after the loss the first hold pre-warmed
the sale from PostgreSQL, holds PostgreSQL counted but Redis had forgotten were copied into
Redis's held units where no expiry would ever release them, reconcile said "ok" and the
units were lost to the sale for good."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from redis.asyncio import Redis

from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import Purchases
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims
from tests.support import Clock

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[[Sale, list[str]], Awaitable[list[Claims]]]


async def test_holds_redis_forgot_are_found_and_released_by_repair(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    services: Services,
    redis: Redis,
    pool: asyncpg.Pool,
    clock: Clock,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=3, hold_seconds=30)
    stock = purchases.stock
    await stock.prewarm(sale)
    a, b = await admit(sale, ["lost-a", "lost-b"])
    await purchases.hold(sale, a, quantity=3)
    await purchases.hold(sale, b, quantity=2)
    persister = Persister(services.redis, pool, services.sales, purchases, consumer="tests")
    while await persister.drain(sale):
        pass
    assert (await stock.reconcile(sale)).ok

    # Redis forgets everything about the sale; the next hold pre-warms it from PostgreSQL
    async for key in redis.scan_iter(match=purchases.keys(sale.id).pattern):
        await redis.unlink(key)
    await stock.prewarm(sale)
    inventory = await redis.hgetall(purchases.keys(sale.id).inventory)
    assert (int(inventory["avail"]), int(inventory["held"])) == (5, 5)  # never oversold

    report = await stock.reconcile(sale)
    assert not report.ok
    assert report.differences == ["postgres: 2 holds Redis does not know (5 units)"]

    clock.advance(31)  # the forgotten holds expire; only then may repair release them
    repaired = await stock.reconcile(sale, repair=True)
    assert repaired.repaired and repaired.ok, repaired.differences
    statuses = await pool.fetch(
        "SELECT status, reason FROM orders WHERE sale_id = $1 ORDER BY id", sale.id
    )
    assert {(r["status"], r["reason"]) for r in statuses} == {("released", "hold expired (repair)")}
    inventory = await redis.hgetall(purchases.keys(sale.id).inventory)
    assert (int(inventory["avail"]), int(inventory["held"])) == (10, 0)  # the stock is back
    row = await pool.fetchrow("SELECT held, sold FROM sale_inventory WHERE sale_id = $1", sale.id)
    assert (row["held"], row["sold"]) == (0, 0)


async def test_an_open_hold_redis_knows_is_not_reported(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    services: Services,
    pool: asyncpg.Pool,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=3)
    await purchases.stock.prewarm(sale)
    (a,) = await admit(sale, ["known-a"])
    await purchases.hold(sale, a, quantity=2)
    persister = Persister(services.redis, pool, services.sales, purchases, consumer="tests")
    while await persister.drain(sale):
        pass
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences
    assert report.postgres["held"] == 2 and report.redis["open_holds"] == 1


async def test_the_persister_drains_again_once_redis_lost_its_group(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    services: Services,
    redis: Redis,
    pool: asyncpg.Pool,
) -> None:
    """Found by the chaos run too: after Redis lost the stream and its consumer group, the
    persister's take-over (XAUTOCLAIM) failed with NOGROUP on every tick, before the read that
    would have recreated the group, so nothing was ever written to PostgreSQL again."""
    sale = await make_sale(stock=10, per_shopper_limit=3)
    await purchases.stock.prewarm(sale)
    a, b = await admit(sale, ["group-a", "group-b"])
    await purchases.hold(sale, a, quantity=1)
    persister = Persister(
        services.redis, pool, services.sales, purchases, consumer="tests", claim_idle_ms=0
    )
    assert await persister.drain(sale) == 1  # the group exists now, and the persister knows it

    await redis.unlink(purchases.keys(sale.id).orders_stream)  # Redis loses the stream
    await purchases.hold(sale, b, quantity=2)  # a new stream, without the group
    # a tick takes over first: it must not fail, so the read after it recreates the group
    assert await persister.take_over(sale) == 0
    assert await persister.drain(sale) == 1
    held = await pool.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM orders WHERE sale_id = $1 AND status = 'held'",
        sale.id,
    )
    assert held == 3
    backlog = await purchases.stock.stream_backlog(sale.id)
    assert (backlog["lag"], backlog["pending"]) == (0, 0)
