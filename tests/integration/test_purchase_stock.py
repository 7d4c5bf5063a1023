"""Buying against real Redis and real PostgreSQL: holds never oversell, seats are never sold
twice, retries are idempotent, limits hold, and every way a hold ends (expiry, decline,
cancel, late payment) puts the stock where it belongs in both stores."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room import ledger
from flashsale.waiting_room.ledger import HoldRecord
from flashsale.waiting_room.payments import (
    CircuitBreaker,
    GuardedProvider,
    PaymentStatus,
    SimulatedProvider,
)
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import Held, PurchaseRefused, Purchases, Refusal, layout_of
from flashsale.waiting_room.redis_client import connect_redis, is_cluster
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale, ValidationError
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.seating import Layout, taken_from_bitmap
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.status import State
from flashsale.waiting_room.stock import NotDrained
from flashsale.waiting_room.tokens import ADMISSION, Claims, Signer
from tests.support import Clock

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[[Sale, list[str]], Awaitable[list[Claims]]]
Drain = Callable[[Sale], Awaitable[int]]


def admission(size: int, **overrides: int) -> dict[str, int]:
    """Admission settings letting `size` shoppers in at once."""
    return {
        "batch_size": size,
        "batch_interval_ms": 50,
        "max_active": size,
        "admission_ttl_seconds": 3600,
        "abandon_after_seconds": 60,
        **overrides,
    }


def seat_map(sections: int, rows: int, seats: int) -> dict[str, Any]:
    return {
        "sections": [
            {
                "name": chr(ord("A") + s),
                "rows": [{"name": str(r + 1), "seats": seats} for r in range(rows)],
            }
            for s in range(sections)
        ]
    }


@pytest.fixture
def drain(services: Services, pool: asyncpg.Pool, purchases: Purchases) -> Drain:
    """Run the persister over a sale's stream until it is empty; returns entries written."""
    persister = Persister(services.redis, pool, services.sales, purchases, consumer="tests")

    async def run(sale: Sale) -> int:
        total = 0
        while moved := await persister.drain(sale):
            total += moved
        return total

    return run


async def inventory(redis: Redis, purchases: Purchases, sale: Sale) -> dict[str, int]:
    raw = await redis.hgetall(purchases.keys(sale.id).inventory)
    return {k: int(raw[k]) for k in ("stock", "avail", "held", "sold")}


async def pg_inventory(pool: asyncpg.Pool, sale: Sale) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
    )
    return dict(row)


async def refusal(call: Awaitable[Any]) -> PurchaseRefused:
    try:
        result = await call
    except PurchaseRefused as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {result!r}")


async def units(redis: Redis, purchases: Purchases, sale: Sale, visitor: str) -> int:
    return int(await redis.get(purchases.keys(sale.id).shopper_units(visitor)) or 0)


async def taken_seats(raw_redis: Redis, purchases: Purchases, sale: Sale) -> set[int]:
    bitmap = await raw_redis.get(purchases.keys(sale.id).seats)
    return taken_from_bitmap(bitmap, sale.stock)


def seat_ids(order: dict[str, Any]) -> list[int]:
    return [s["id"] for s in order["seats"]]


async def db_order(pool: asyncpg.Pool, order_id: str) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)


# -- 1. no oversell under a stampede ----------------------------------------------------------


@pytest.fixture
async def crowd_purchases(
    settings: Settings, pool: asyncpg.Pool, signer: Signer, clock: Clock
) -> AsyncIterator[Purchases]:
    """Purchases over Redis clients whose pools make callers wait for a connection (at most
    200 each) instead of refusing them, so thousands of coroutines can buy at once."""
    crowd = replace(settings, redis_max_connections=200, redis_pool_timeout_seconds=30)
    cluster = await is_cluster(settings)
    redis = connect_redis(crowd, cluster=cluster)
    raw_redis = connect_redis(crowd, cluster=cluster, decode=False)
    room = WaitingRoom(redis, settings, signer, clock=clock)
    services = Services.build(
        settings, redis, raw_redis, pool, room=room, sales=Sales(pool, room, clock=clock.now)
    )
    yield services.purchases
    await redis.aclose()
    await raw_redis.aclose()


async def test_5000_concurrent_holds_on_100_units_hold_exactly_100(
    make_sale: MakeSale,
    admit: Admit,
    crowd_purchases: Purchases,
    redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    purchases = crowd_purchases
    already_open = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    sale = await make_sale(
        stock=100, per_shopper_limit=1, opens_at=already_open, admission=admission(5000)
    )
    crowd = await admit(sale, [f"stampede-{n:05d}" for n in range(5000)])
    assert (await purchases.stock.prewarm(sale))["outcome"] == "ok"

    async def attempt(claims: Claims) -> Held | str:
        try:
            return await purchases.hold(sale, claims, quantity=1)
        except PurchaseRefused as exc:
            return exc.code

    results = await asyncio.gather(*(attempt(c) for c in crowd))
    held = [r for r in results if isinstance(r, Held)]
    assert len(held) == 100
    assert Counter(r for r in results if isinstance(r, str)) == {"sold_out": 4900}
    assert all(h.created and h.order["quantity"] == 1 for h in held)
    assert len({h.order["id"] for h in held}) == 100
    keys = purchases.keys(sale.id)
    assert await inventory(redis, purchases, sale) == {
        "stock": 100,
        "avail": 0,
        "held": 100,
        "sold": 0,
    }
    assert await redis.zcard(keys.holds) == 100
    assert await redis.xlen(keys.orders_stream) == 100
    assert await redis.hget(keys.meta, "sold_out") == "1"

    assert await drain(sale) == 100
    assert await pg_inventory(pool, sale) == {"stock": 100, "held": 100, "sold": 0}
    rows = await pool.fetch(
        "SELECT status, count(*) AS n, sum(quantity) AS q FROM orders"
        " WHERE sale_id = $1 GROUP BY status",
        sale.id,
    )
    assert [(r["status"], r["n"], r["q"]) for r in rows] == [("held", 100, 100)]
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences
    assert report.stream == {"length": 100, "pending": 0, "lag": 0}


# -- 2. seats ----------------------------------------------------------------------------------


def longest_free_run(layout: Layout, taken: set[int]) -> int:
    """The longest run of adjacent free seats in any one row."""
    longest = 0
    for row in layout.rows:
        run = 0
        for seat in row.seats:
            run = 0 if seat in taken else run + 1
            longest = max(longest, run)
    return longest


def together(layout: Layout, seats: list[int]) -> bool:
    """Adjacent seats of one row."""
    return len({layout.row_of(s) for s in seats}) == 1 and max(seats) - min(seats) == len(seats) - 1


async def test_concurrent_parties_never_share_a_seat_and_sit_together(
    make_sale: MakeSale,
    admit: Admit,
    crowd_purchases: Purchases,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    """Three hundred parties ask for seats, half at the same instant, and a quarter of those
    seated cancel a moment later, so seats come back while others are being seated. Each
    party is one call: it is never told its seats went to someone else, and, replayed in the
    order Redis applied the holds and releases, every party sat together whenever some row
    had a long enough free run."""
    purchases = crowd_purchases
    sale = await make_sale(
        seat_map=seat_map(3, 5, 12), per_shopper_limit=6, admission=admission(304)
    )
    assert sale.stock == 180
    layout = layout_of(sale)
    rng = random.Random(2024)
    sizes = [rng.randint(1, 6) for _ in range(300)]
    assert sum(sizes) > 3 * sale.stock  # far more demand than seats
    cancels = [rng.random() < 0.25 for _ in sizes]
    # half arrive at once, half over the next 200 ms, so holds and cancellations mix
    arrivals = [0.0 if n % 2 else rng.uniform(0, 0.2) for n in range(len(sizes))]
    *crowd, b1, b2, b3, b4 = await admit(sale, [f"party-{n:03d}" for n in range(304)])
    await purchases.stock.prewarm(sale)
    # section A is broken up first (every third seat taken): its rows keep enough free seats
    # for most parties but no run longer than 2, so sitting together means going further back
    blocked = [row * 12 + seat for row in range(5) for seat in (2, 5, 8, 11)]
    blocks = [
        (await purchases.hold(sale, b, seats=blocked[k * 5 : k * 5 + 5])).order["id"]
        for k, b in enumerate((b1, b2, b3, b4))
    ]

    async def party(
        claims: Claims, size: int, cancel: bool, arrival: float
    ) -> Held | PurchaseRefused:
        await asyncio.sleep(arrival)
        try:
            held = await purchases.hold(sale, claims, quantity=size)
        except PurchaseRefused as exc:
            return exc
        if cancel:  # changes their mind a moment later
            await asyncio.sleep(rng.uniform(0, 0.1))
            await purchases.cancel(sale, claims.visitor, held.order["id"])
        return held

    results = await asyncio.gather(
        *(party(*p) for p in zip(crowd, sizes, cancels, arrivals, strict=True))
    )
    held = [(r, s) for r, s in zip(results, sizes, strict=True) if isinstance(r, Held)]
    refused = [r for r in results if isinstance(r, PurchaseRefused)]
    assert len(held) + len(refused) == 300
    # nobody is told to try again: a party is seated, or too few seats are free for it
    assert refused and {r.code for r in refused} <= {"insufficient_stock", "sold_out"}
    assert all(len(seat_ids(h.order)) == h.order["quantity"] == s for h, s in held)
    kept = [r for r, x in zip(results, cancels, strict=True) if isinstance(r, Held) and not x]
    sold = [seat for h in kept for seat in seat_ids(h.order)] + blocked
    total = len(sold)
    assert len(set(sold)) == total  # no seat twice
    keys = purchases.keys(sale.id)
    assert await redis.bitcount(keys.seats) == total
    assert await taken_seats(raw_redis, purchases, sale) == set(sold)
    assert await inventory(redis, purchases, sale) == {
        "stock": 180,
        "avail": 180 - total,
        "held": total,
        "sold": 0,
    }

    # replay in the order Redis applied holds and releases: whenever a row still had a free
    # run as long as the party, the party sat together, and no seat was ever held twice
    entries = await redis.xrange(keys.orders_stream)
    assert [f["order"] for _, f in entries[:4]] == blocks
    taken = set(blocked)
    seats_of: dict[str, list[int]] = {}
    eligible = apart = holds_after_a_release = 0
    released = False
    for _, fields in entries[4:]:
        if fields["type"] == "release":
            taken -= set(seats_of[fields["order"]])
            released = True
            continue
        seats = [int(s) for s in fields["seats"].split(",")]
        assert not taken & set(seats)
        if longest_free_run(layout, taken) >= len(seats):
            eligible += 1
            assert together(layout, seats), (seats, sorted(taken))
        else:
            apart += not together(layout, seats)
        holds_after_a_release += released
        seats_of[fields["order"]] = seats
        taken |= set(seats)
    assert taken == set(sold)
    assert len(seats_of) == len(held)
    # the test saw what it is about: parties seated while seats came back, the venue running
    # short of long runs, and parties that had to sit apart because no row could take them
    assert eligible >= 30 and holds_after_a_release >= 5 and apart >= 1

    assert await drain(sale) == len(entries)
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT seat) AS d FROM order_seats"
        " WHERE sale_id = $1 AND active",
        sale.id,
    )
    assert (row["n"], row["d"]) == (total, total)
    pg_seats = {
        r["seat"]
        for r in await pool.fetch(
            "SELECT seat FROM order_seats WHERE sale_id = $1 AND active", sale.id
        )
    }
    assert pg_seats == set(sold)
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


async def test_a_burst_of_pairs_is_seated_together_each_in_one_call(
    make_sale: MakeSale,
    admit: Admit,
    crowd_purchases: Purchases,
    redis: Redis,
) -> None:
    """A hundred couples ask at the same instant for a venue of exactly a hundred pairs of
    seats: every couple is seated together on its first call, and the venue ends full. (Seats
    chosen outside the hold script from a copy of the map collided here: most couples were
    told to try again, and the last ones sat apart.)"""
    purchases = crowd_purchases
    sale = await make_sale(
        seat_map=seat_map(1, 10, 20), per_shopper_limit=2, admission=admission(100)
    )
    layout = layout_of(sale)
    couples = await admit(sale, [f"couple-{n:03d}" for n in range(100)])
    await purchases.stock.prewarm(sale)
    held = await asyncio.gather(*(purchases.hold(sale, c, quantity=2) for c in couples))
    assert all(h.created and together(layout, seat_ids(h.order)) for h in held)
    assert len({s for h in held for s in seat_ids(h.order)}) == 200
    assert await redis.bitcount(purchases.keys(sale.id).seats) == 200
    assert await inventory(redis, purchases, sale) == {
        "stock": 200,
        "avail": 0,
        "held": 200,
        "sold": 0,
    }


async def test_requested_seats_are_held_when_free_and_refused_when_taken(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(seat_map=seat_map(1, 2, 4), per_shopper_limit=4)
    a, b = await admit(sale, ["seat-a", "seat-b"])
    first = await purchases.hold(sale, a, seats=[1, 2])
    assert first.created
    assert first.order["seats"] == [
        {"id": 1, "section": "A", "row": "1", "seat": "2"},
        {"id": 2, "section": "A", "row": "1", "seat": "3"},
    ]
    clash = await refusal(purchases.hold(sale, b, seats=[2, 3]))
    assert (clash.kind, clash.code) == (Refusal.CONFLICT, "seats_taken")
    # the refusal changed nothing
    assert await taken_seats(raw_redis, purchases, sale) == {1, 2}
    assert await inventory(redis, purchases, sale) == {"stock": 8, "avail": 6, "held": 2, "sold": 0}
    assert await units(redis, purchases, sale, "seat-b") == 0
    second = await purchases.hold(sale, b, seats=[3, 0, 7])
    assert seat_ids(second.order) == [3, 0, 7]
    assert await taken_seats(raw_redis, purchases, sale) == {0, 1, 2, 3, 7}
    for bad in ([8], [4, 4], [-1]):
        exc = await refusal(purchases.hold(sale, b, seats=bad))
        assert (exc.kind, exc.code, exc.extra["field"]) == (Refusal.INVALID, "invalid", "seats")

    assert await drain(sale) == 2
    rows = await pool.fetch(
        "SELECT seat, label FROM order_seats WHERE sale_id = $1 AND active ORDER BY seat", sale.id
    )
    assert [(r["seat"], r["label"]) for r in rows] == [
        (0, "A / row 1 / seat 1"),
        (1, "A / row 1 / seat 2"),
        (2, "A / row 1 / seat 3"),
        (3, "A / row 1 / seat 4"),
        (7, "A / row 2 / seat 4"),
    ]

    quantity_sale = await make_sale(stock=5)
    (c,) = await admit(quantity_sale, ["seat-c"])
    exc = await refusal(purchases.hold(quantity_sale, c, seats=[0]))
    assert (exc.kind, exc.code) == (Refusal.INVALID, "invalid")


# -- 3. idempotency ----------------------------------------------------------------------------


async def test_retries_with_one_idempotency_key_make_one_hold(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=3)
    a, b = await admit(sale, ["idem-a", "idem-b"])
    results = await asyncio.gather(
        *(purchases.hold(sale, a, quantity=1, idempotency_key="k-1") for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.order["id"] for r in results}) == 1
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 9,
        "held": 1,
        "sold": 0,
    }
    assert await units(redis, purchases, sale, "idem-a") == 1

    other = await purchases.hold(sale, a, quantity=2, idempotency_key="k-2")
    assert other.created and other.order["id"] != results[0].order["id"]
    again = await asyncio.gather(
        *(purchases.hold(sale, a, quantity=2, idempotency_key="k-2") for _ in range(5))
    )
    assert {(r.created, r.order["id"]) for r in again} == {(False, other.order["id"])}
    # keys belong to one shopper: the same key from another makes another hold
    theirs = await purchases.hold(sale, b, quantity=1, idempotency_key="k-1")
    assert theirs.created and theirs.order["id"] != results[0].order["id"]
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 6,
        "held": 4,
        "sold": 0,
    }
    assert await redis.xlen(purchases.keys(sale.id).orders_stream) == 3

    assert await drain(sale) == 3
    rows = await pool.fetch(
        "SELECT id, visitor, idempotency_key, quantity, status FROM orders"
        " WHERE sale_id = $1 ORDER BY visitor, idempotency_key",
        sale.id,
    )
    assert [(r["visitor"], r["idempotency_key"], r["quantity"], r["status"]) for r in rows] == [
        ("idem-a", "k-1", 1, "held"),
        ("idem-a", "k-2", 2, "held"),
        ("idem-b", "k-1", 1, "held"),
    ]
    # PostgreSQL itself refuses a second order with a used key (the last guard)
    forged = HoldRecord(
        order_id="00000000-0000-4000-8000-000000000001",
        sale_id=sale.id,
        visitor="idem-a",
        index=a.index,
        quantity=1,
        expires_ms=int(purchases.clock() * 1000) + 60_000,
        amount_cents=0,
        limit=3,
        idempotency_key="k-1",
    )
    async with pool.acquire() as conn, conn.transaction():
        applied = await ledger.record_holds(conn, [forged], currency="USD")
    assert applied.refused == {forged.order_id: ledger.REFUSALS["orders_idempotency_once"]}
    assert (await db_order(pool, forged.order_id))["status"] == "failed"
    assert await pg_inventory(pool, sale) == {"stock": 10, "held": 4, "sold": 0}


# -- 4. per-shopper limit -----------------------------------------------------------------------


async def test_per_shopper_limit(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=2)
    a, b = await admit(sale, ["limit-a", "limit-b"])
    one = await purchases.hold(sale, a, quantity=1)
    await purchases.hold(sale, a, quantity=1)
    third = await refusal(purchases.hold(sale, a, quantity=1))
    assert (third.kind, third.code, third.extra["remaining"]) == (
        Refusal.CONFLICT,
        "limit_reached",
        0,
    )
    at_once = await refusal(purchases.hold(sale, b, quantity=3))
    assert (at_once.kind, at_once.code, at_once.extra["remaining"]) == (
        Refusal.CONFLICT,
        "limit_reached",
        2,
    )
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 8,
        "held": 2,
        "sold": 0,
    }
    await purchases.hold(sale, b, quantity=1)
    over = await refusal(purchases.hold(sale, b, quantity=2))
    assert (over.code, over.extra["remaining"]) == ("limit_reached", 1)

    cancelled = await purchases.cancel(sale, "limit-a", one.order["id"])
    assert cancelled["status"] == "cancelled"
    assert await units(redis, purchases, sale, "limit-a") == 1
    again = await purchases.hold(sale, a, quantity=1)  # room again under the limit
    assert again.created
    assert (await refusal(purchases.hold(sale, a, quantity=1))).code == "limit_reached"
    assert await units(redis, purchases, sale, "limit-a") == 2
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 7,
        "held": 3,
        "sold": 0,
    }

    assert await drain(sale) == 5  # four holds and one cancellation
    totals = {
        r["visitor"]: (r["units"], r["limit_units"])
        for r in await pool.fetch(
            "SELECT visitor, units, limit_units FROM shopper_totals WHERE sale_id = $1", sale.id
        )
    }
    assert totals == {"limit-a": (2, 2), "limit-b": (1, 2)}
    # the database refuses a hold past the limit even if Redis let one through
    forged = HoldRecord(
        order_id="00000000-0000-4000-8000-000000000002",
        sale_id=sale.id,
        visitor="limit-a",
        index=a.index,
        quantity=1,
        expires_ms=int(purchases.clock() * 1000) + 60_000,
        amount_cents=0,
        limit=2,
    )
    async with pool.acquire() as conn, conn.transaction():
        applied = await ledger.record_holds(conn, [forged], currency="USD")
    assert applied.refused == {forged.order_id: ledger.REFUSALS["shopper_within_limit"]}
    assert (
        await pool.fetchval(
            "SELECT units FROM shopper_totals WHERE sale_id = $1 AND visitor = 'limit-a'", sale.id
        )
        == 2
    )
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


# -- 5. expiry -----------------------------------------------------------------------------------


async def test_expired_hold_returns_stock_seats_and_units(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
    clock: Clock,
) -> None:
    sale = await make_sale(seat_map=seat_map(1, 2, 5), per_shopper_limit=3, hold_seconds=30)
    (a,) = await admit(sale, ["expiry-a"])
    held = await purchases.hold(sale, a, quantity=3)
    seats = set(seat_ids(held.order))
    assert await taken_seats(raw_redis, purchases, sale) == seats
    assert await drain(sale) == 1
    clock.advance(29)
    assert await purchases.sweep(sale) == {"expired": 0, "confirmed": 0, "kept": 0, "cancelled": 0}
    clock.advance(2)
    assert await purchases.sweep(sale) == {"expired": 1, "confirmed": 0, "kept": 0, "cancelled": 0}
    order = await purchases.order(sale, "expiry-a", held.order["id"])
    assert (order["status"], order["reason"]) == ("released", "hold expired")
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 10,
        "held": 0,
        "sold": 0,
    }
    assert await taken_seats(raw_redis, purchases, sale) == set()
    assert await units(redis, purchases, sale, "expiry-a") == 0
    assert await redis.zcard(purchases.keys(sale.id).holds) == 0
    # the shopper's units are free again: the whole limit can be held anew, same seats too
    retaken = await purchases.hold(sale, a, seats=sorted(seats))
    assert retaken.created

    assert await drain(sale) == 2  # the release and the new hold
    assert (await db_order(pool, held.order["id"]))["status"] == "released"
    assert await pg_inventory(pool, sale) == {"stock": 10, "held": 3, "sold": 0}
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


async def test_sweeper_confirms_an_expired_hold_whose_late_payment_went_through(
    settings: Settings,
    make_sale: MakeSale,
    admit: Admit,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    drain: Drain,
    clock: Clock,
) -> None:
    provider = SimulatedProvider(redis, settings.redis_prefix, slow_s=30.0)
    payments = GuardedProvider(
        provider, CircuitBreaker(threshold=5, reset_after=10.0), timeout_s=0.2
    )
    services = Services.build(
        settings, redis, raw_redis, pool, room=room, sales=sales, payments=payments
    )
    purchases = services.purchases
    sale = await make_sale(stock=5, per_shopper_limit=2, hold_seconds=30, price_cents=700)
    late, failing = await admit(sale, ["late-a", "late-b"])
    paid = (await purchases.hold(sale, late, quantity=2)).order["id"]
    unpaid = (await purchases.hold(sale, failing, quantity=1)).order["id"]
    # a slow provider: money moves but the answer comes too late; an outage: none moves
    for visitor, order_id, mode in (("late-a", paid, "slow"), ("late-b", unpaid, "error")):
        await provider.set_mode(mode)
        try:
            exc = await refusal(purchases.pay(sale, visitor, order_id, "tok_approve"))
        finally:
            await provider.set_mode("up")
        assert (exc.kind, exc.code) == (Refusal.UNAVAILABLE, "payment_unavailable")
        assert (await purchases.order(sale, visitor, order_id))["status"] == "held"
    assert await provider.status(paid) is PaymentStatus.PAID
    assert await provider.status(unpaid) is PaymentStatus.NONE

    # a refused payment attempt keeps the hold past its expiry for a grace period
    clock.advance(31)
    assert await purchases.sweep(sale) == {"expired": 0, "confirmed": 0, "kept": 0, "cancelled": 0}
    clock.advance(40)
    assert await purchases.sweep(sale) == {"expired": 1, "confirmed": 1, "kept": 0, "cancelled": 0}
    confirmed = await purchases.order(sale, "late-a", paid)
    assert confirmed["status"] == "confirmed"
    assert (await purchases.order(sale, "late-b", unpaid))["status"] == "released"
    assert await inventory(redis, purchases, sale) == {"stock": 5, "avail": 3, "held": 0, "sold": 2}
    row = await db_order(pool, paid)
    assert (row["status"], row["payment_ref"]) == ("confirmed", f"late-{paid}")

    assert await drain(sale) == 3  # two holds, one release
    assert await pg_inventory(pool, sale) == {"stock": 5, "held": 0, "sold": 2}
    assert (await db_order(pool, unpaid))["status"] == "released"
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


# -- 6. decline ----------------------------------------------------------------------------------


async def test_declined_payment_releases_the_hold(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(stock=5, per_shopper_limit=2, price_cents=1500)
    (a,) = await admit(sale, ["decline-a"])
    held = await purchases.hold(sale, a, quantity=2)
    assert held.order["amount_cents"] == 3000
    exc = await refusal(purchases.pay(sale, "decline-a", held.order["id"], "tok_decline"))
    assert (exc.kind, exc.code) == (Refusal.DECLINED, "payment_declined")
    assert exc.order is not None
    assert (exc.order["status"], exc.order["reason"]) == (
        "released",
        "payment declined: card declined",
    )
    assert await inventory(redis, purchases, sale) == {"stock": 5, "avail": 5, "held": 0, "sold": 0}
    assert await units(redis, purchases, sale, "decline-a") == 0
    assert await purchases.payments.status(held.order["id"]) is PaymentStatus.DECLINED
    # paying again is refused: the order is over
    again = await refusal(purchases.pay(sale, "decline-a", held.order["id"], "tok_approve"))
    assert (again.kind, again.code) == (Refusal.GONE, "order_released")

    assert await drain(sale) == 2
    assert (await db_order(pool, held.order["id"]))["status"] == "released"
    assert await pg_inventory(pool, sale) == {"stock": 5, "held": 0, "sold": 0}
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


# -- 7. cancel -----------------------------------------------------------------------------------


async def test_cancel_returns_stock_for_holds_and_refunds_confirmed_orders(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(seat_map=seat_map(1, 2, 4), per_shopper_limit=4, price_cents=1000)
    a, b = await admit(sale, ["cancel-a", "cancel-b"])
    hold_a = await purchases.hold(sale, a, quantity=2)
    cancelled = await purchases.cancel(sale, "cancel-a", hold_a.order["id"])
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "cancelled by the shopper")
    assert await inventory(redis, purchases, sale) == {"stock": 8, "avail": 8, "held": 0, "sold": 0}
    assert await taken_seats(raw_redis, purchases, sale) == set()

    hold_b = await purchases.hold(sale, b, quantity=3)
    order_id = hold_b.order["id"]
    confirmed = await purchases.pay(sale, "cancel-b", order_id, "tok_approve")
    assert confirmed["status"] == "confirmed"
    assert await pg_inventory(pool, sale) == {"stock": 8, "held": 0, "sold": 3}
    assert await inventory(redis, purchases, sale) == {"stock": 8, "avail": 5, "held": 0, "sold": 3}
    refunded = await purchases.cancel(sale, "cancel-b", order_id)
    assert refunded["status"] == "cancelled"
    assert await purchases.payments.status(order_id) is PaymentStatus.REFUNDED
    row = await db_order(pool, order_id)
    assert (row["status"], row["reason"]) == ("cancelled", "cancelled and refunded")
    assert await pg_inventory(pool, sale) == {"stock": 8, "held": 0, "sold": 0}
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM order_seats WHERE order_id = $1 AND active", order_id
        )
        == 0
    )
    assert (
        await pool.fetchval(
            "SELECT units FROM shopper_totals WHERE sale_id = $1 AND visitor = 'cancel-b'", sale.id
        )
        == 0
    )
    assert await inventory(redis, purchases, sale) == {"stock": 8, "avail": 8, "held": 0, "sold": 0}
    assert await taken_seats(raw_redis, purchases, sale) == set()
    assert await units(redis, purchases, sale, "cancel-b") == 0
    twice = await refusal(purchases.cancel(sale, "cancel-b", order_id))
    assert (twice.kind, twice.code) == (Refusal.CONFLICT, "order_cancelled")

    # the stream still carries both holds and both cancellations (B's ends it from PostgreSQL's
    # `cancelling`, which it no longer is): replaying them changes nothing
    assert await drain(sale) == 4
    assert (await db_order(pool, hold_a.order["id"]))["status"] == "cancelled"
    assert await pg_inventory(pool, sale) == {"stock": 8, "held": 0, "sold": 0}
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report.differences


# -- 8. the sold-out hook ------------------------------------------------------------------------


async def test_last_unit_held_sells_out_the_room_until_the_hold_expires(
    make_sale: MakeSale,
    room: WaitingRoom,
    purchases: Purchases,
    clock: Clock,
    signer: Signer,
) -> None:
    sale = await make_sale(
        stock=1, per_shopper_limit=1, hold_seconds=10, admission=admission(1, max_active=3)
    )
    tickets = {}
    for visitor in ("hook-a", "hook-b", "hook-c"):
        tickets[visitor] = (await room.join(sale.id, visitor, "198.51.100.2")).claims
    clock.advance(3601)
    for ticket in tickets.values():
        await room.poll(sale.id, ticket)
    assert (await room.admit_once(sale.id)).outcome == "opened"

    async def admit_next() -> tuple[str, Claims]:
        clock.advance(0.05)
        result = await room.admit_once(sale.id)
        assert (result.outcome, result.admitted) == ("ok", 1)
        for visitor, ticket in tickets.items():
            poll = await room.poll(sale.id, ticket)
            if poll.status.state is State.ADMITTED:
                del tickets[visitor]
                token = signer.verify(
                    poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock()
                )
                return visitor, token
        raise AssertionError("nobody was admitted")

    first, first_claims = await admit_next()
    held = await purchases.hold(sale, first_claims, quantity=1)
    view = await room.view(sale.id, fresh=True)
    assert (view.sold_out, view.held_units) == (True, 1)
    for ticket in tickets.values():  # waiters keep their place: the unit may come back
        status = (await room.poll(sale.id, ticket)).status
        assert status.state is State.SOLD_OUT
        assert status.poll_after_seconds is not None and status.position is not None
    clock.advance(0.05)
    assert (await room.admit_once(sale.id)).outcome == "sold_out"

    clock.advance(11)
    assert (await purchases.sweep(sale))["expired"] == 1
    assert (await purchases.order(sale, first, held.order["id"]))["status"] == "released"
    assert not (await room.view(sale.id, fresh=True)).sold_out
    for ticket in tickets.values():
        assert (await room.poll(sale.id, ticket)).status.state is State.WAITING
    second, second_claims = await admit_next()  # admission resumes
    bought = await purchases.hold(sale, second_claims, quantity=1)
    await purchases.pay(sale, second, bought.order["id"], "tok_approve")
    # sold for good: the last waiter is told so and need not poll again
    (last,) = tickets.values()
    status = (await room.poll(sale.id, last)).status
    assert (status.state, status.poll_after_seconds) == (State.SOLD_OUT, None)


# -- 9. reconcile, repair, prewarm and stock changes ---------------------------------------------


async def test_prewarm_reconcile_repair_and_stock_changes(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    sales: Sales,
    redis: Redis,
    pool: asyncpg.Pool,
    drain: Drain,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=2)
    stock = purchases.stock
    assert not await stock.is_warm(sale.id)
    assert (await stock.prewarm(sale))["outcome"] == "ok"
    assert (await stock.prewarm(sale))["outcome"] == "already_warm"
    a, b, c = await admit(sale, ["rec-a", "rec-b", "rec-c"])
    bought = await purchases.hold(sale, a, quantity=2)
    await purchases.pay(sale, "rec-a", bought.order["id"], "tok_approve")
    await purchases.hold(sale, b, quantity=1)
    # a warm sale is never re-warmed by accident: its live counters stay
    assert (await stock.prewarm(sale))["outcome"] == "already_warm"
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 7,
        "held": 1,
        "sold": 2,
    }
    assert await drain(sale) == 2
    assert (await stock.reconcile(sale)).ok

    keys = purchases.keys(sale.id)
    await redis.hincrby(keys.inventory, "avail", 5)  # Redis drifts: phantom stock
    report = await stock.reconcile(sale)
    assert not report.ok
    assert report.differences == [
        "redis: available + held + sold = 15, stock = 10",
        "redis offers more stock than postgres allows",
    ]
    assert report.redis["avail"] == 12 and report.postgres["held"] == 1

    await purchases.hold(sale, c, quantity=1)  # not yet in PostgreSQL
    with pytest.raises(NotDrained):
        await stock.reconcile(sale, repair=True)
    assert (await inventory(redis, purchases, sale))["avail"] == 11  # untouched
    assert await drain(sale) == 1
    repaired = await stock.reconcile(sale, repair=True)
    assert repaired.repaired and repaired.ok, repaired.differences
    assert await inventory(redis, purchases, sale) == {
        "stock": 10,
        "avail": 6,
        "held": 2,
        "sold": 2,
    }
    assert (await stock.prewarm(sale, force=True))["outcome"] == "ok"  # forced: allowed
    assert (await stock.reconcile(sale)).ok

    # the admin raises stock: Redis offers the new units at once
    raised = await sales.update(sale.id, {"stock": 15})
    assert raised.stock == 15
    assert await inventory(redis, purchases, sale) == {
        "stock": 15,
        "avail": 11,
        "held": 2,
        "sold": 2,
    }
    assert await pg_inventory(pool, sale) == {"stock": 15, "held": 2, "sold": 2}
    # and cannot cut below what is held and sold
    with pytest.raises(ValidationError) as refused:
        await sales.update(sale.id, {"stock": 3})
    assert refused.value.field == "stock"
    assert (await sales.get(sale.id)).stock == 15
    assert await pg_inventory(pool, sale) == {"stock": 15, "held": 2, "sold": 2}
    assert (await inventory(redis, purchases, sale))["avail"] == 11
    await sales.update(sale.id, {"stock": 4})  # exactly held + sold: allowed, nothing left
    assert await inventory(redis, purchases, sale) == {"stock": 4, "avail": 0, "held": 2, "sold": 2}
    assert (await stock.reconcile(sale)).ok
