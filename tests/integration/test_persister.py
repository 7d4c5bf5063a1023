"""The persister, on real Redis and PostgreSQL: killed mid-batch as a real process, poison
entries, retries that end in the dead-letter stream, harmless replays and the lag metric."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room import purchase as purchase_module
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import PurchaseRefused, Purchases, Refusal
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.stock import PERSISTER_GROUP
from flashsale.waiting_room.tokens import Claims
from tests.support import REPO

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]


async def hold_all(
    purchases: Purchases,
    sale: Sale,
    shoppers: list[Claims],
    quantities: list[int] | None = None,
    chunk: int = 50,
) -> list[str]:
    """Each shopper holds (1 unit unless told); returns the order ids in shopper order."""
    quantities = quantities or [1] * len(shoppers)
    ids: list[str] = []
    for start in range(0, len(shoppers), chunk):
        held = await asyncio.gather(
            *(
                purchases.hold(sale, s, quantity=q)
                for s, q in zip(
                    shoppers[start : start + chunk], quantities[start : start + chunk], strict=True
                )
            )
        )
        assert all(h.created and h.order["status"] == "held" for h in held)
        ids += [h.order["id"] for h in held]
    return ids


async def orders_in_db(pool: asyncpg.Pool, sale: Sale) -> dict[str, str]:
    rows = await pool.fetch("SELECT id, status FROM orders WHERE sale_id = $1", sale.id)
    return {str(r["id"]): r["status"] for r in rows}


async def ledger_snapshot(pool: asyncpg.Pool, sale: Sale) -> dict[str, Any]:
    """Everything PostgreSQL knows of a sale's orders."""
    orders = await pool.fetch(
        "SELECT id, status, reason, quantity, updated_at FROM orders WHERE sale_id = $1"
        " ORDER BY id",
        sale.id,
    )
    inventory = await pool.fetchrow(
        "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
    )
    totals = await pool.fetch(
        "SELECT visitor, units FROM shopper_totals WHERE sale_id = $1 ORDER BY visitor", sale.id
    )
    events = await pool.fetch(
        "SELECT e.order_id, e.status FROM order_events e JOIN orders o ON o.id = e.order_id"
        " WHERE o.sale_id = $1 ORDER BY e.id",
        sale.id,
    )
    return {
        "orders": [tuple(r) for r in orders],
        "inventory": tuple(inventory),
        "totals": [tuple(r) for r in totals],
        "events": [tuple(r) for r in events],
    }


def lag_metric(sale: Sale) -> float | None:
    return REGISTRY.get_sample_value("flashsale_persister_lag_entries", {"sale": sale.id})


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    within: float = 30,
    every: float = 0.005,
    alive: asyncio.subprocess.Process | None = None,
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if alive is not None and alive.returncode is not None:
            raise AssertionError(f"the persister exited ({alive.returncode}) before: {what}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(every)


# -- killed mid-batch -------------------------------------------------------------------------


async def start_persister(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
        "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
        "FLASHSALE_TOKEN_KEY": settings.token_key,
        "FLASHSALE_PERSISTER_BATCH": "50",
        "FLASHSALE_PERSISTER_CLAIM_IDLE_MS": "500",
        "FLASHSALE_METRICS_PORT": "0",
        "FLASHSALE_ADMITTER_REFRESH_SECONDS": "0.2",
        "FLASHSALE_LOG_JSON": "false",
    }
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flashsale.cli",
            "persister",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


async def test_persister_killed_mid_batch_loses_and_duplicates_nothing(
    settings: Settings,
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
    tmp_path: Path,
) -> None:
    # 2,000 real holds: 200 admitted shoppers, ten holds each of 1 or 2 units (15 units)
    sale = await make_sale(
        stock=5000,
        per_shopper_limit=15,
        admission={
            "batch_size": 500,
            "batch_interval_ms": 50,
            "max_active": 500,
            "admission_ttl_seconds": 600,
            "abandon_after_seconds": 60,
        },
    )
    shoppers = await admit(sale, 200)
    buyers = [s for _ in range(10) for s in shoppers]
    quantities = [1 + n // len(shoppers) % 2 for n in range(len(buyers))]
    order_ids = await hold_all(purchases, sale, buyers, quantities)
    holds_n, units = len(order_ids), sum(quantities)
    assert (holds_n, units) == (2000, 3000)
    stream = room.keys(sale.id).orders_stream
    assert await redis.xlen(stream) == holds_n

    async def committed() -> int:
        return await pool.fetchval("SELECT count(*) FROM orders WHERE sale_id = $1", sale.id)

    log = tmp_path / "persister.log"
    first = await start_persister(settings, log)
    second: asyncio.subprocess.Process | None = None
    locker = await asyncpg.connect(
        settings.database_url, server_settings={"search_path": settings.database_schema}
    )
    try:

        async def some_written() -> bool:
            return await committed() > 0

        await wait_until(some_written, "some orders are written", alive=first)
        # hold the sale's inventory row: the persister's next batch blocks inside its
        # transaction, read from the stream but neither committed nor acknowledged
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM sale_inventory WHERE sale_id = $1 FOR UPDATE", sale.id)
        before_kill = await committed()
        assert 0 < before_kill < holds_n, "the persister finished before it could be stopped"
        locker_pid = await locker.fetchval("SELECT pg_backend_pid()")

        async def blocked_backends() -> list[int]:
            return [
                r["pid"]
                for r in await pool.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    locker_pid,
                )
            ]

        async def waiting_mid_batch() -> bool:
            return bool(await blocked_backends())

        await wait_until(waiting_mid_batch, "the persister waits mid-batch", alive=first)
        blocked = await blocked_backends()
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL

        pending = await redis.xpending(stream, PERSISTER_GROUP)
        assert pending["pending"] > 0
        assert [c["name"] for c in pending["consumers"]] == [f"{socket.gethostname()}-{first.pid}"]
        backlog = await purchases.stock.stream_backlog(sale.id)
        assert backlog["pending"] == pending["pending"]
        # acknowledged entries are exactly the committed ones: the rest is unread or pending
        assert before_kill + backlog["pending"] + backlog["lag"] == holds_n
        await lock.rollback()

        async def dead_backend_gone() -> bool:
            return not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", blocked
            )

        await wait_until(dead_backend_gone, "the killed persister's transaction is gone")
        assert await committed() == before_kill  # the half-written batch was rolled back

        second = await start_persister(settings, log)

        async def drained() -> bool:
            backlog = await purchases.stock.stream_backlog(sale.id)
            return backlog["lag"] == 0 and backlog["pending"] == 0

        await wait_until(drained, "the stream is drained", every=0.05, alive=second)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 10) == 0
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    finally:
        await locker.close()
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert "took over entries" in log.read_text()
    orders = await orders_in_db(pool, sale)
    assert len(orders) == holds_n and set(orders) == set(order_ids)
    assert set(orders.values()) == {"held"}
    inventory = await pool.fetchrow(
        "SELECT held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
    )
    assert (inventory["held"], inventory["sold"]) == (units, 0)
    assert (
        await pool.fetchval("SELECT sum(units) FROM shopper_totals WHERE sale_id = $1", sale.id)
        == units
    )
    events = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT e.order_id) AS orders FROM order_events e"
        " JOIN orders o ON o.id = e.order_id WHERE o.sale_id = $1",
        sale.id,
    )
    assert (events["n"], events["orders"]) == (holds_n, holds_n)
    assert await redis.xlen(room.keys(sale.id).dead_letters) == 0
    assert (await purchases.stock.reconcile(sale)).ok


# -- entries that cannot be applied -----------------------------------------------------------


async def test_poison_entries_go_to_the_dead_letter_stream(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    sale = await make_sale(stock=10)
    keys = room.keys(sale.id)
    shoppers = await admit(sale, 4)
    good = await hold_all(purchases, sale, shoppers[:2])
    [(_, template)] = await redis.xrange(keys.orders_stream, count=1)
    bad = {
        await redis.xadd(
            keys.orders_stream, {"type": "hold", "order": str(uuid.uuid4()), "sale": sale.id}
        ): "unreadable hold: KeyError",
        await redis.xadd(
            keys.orders_stream, {"type": "refund", "order": str(uuid.uuid4())}
        ): "unknown entry type 'refund'",
        await redis.xadd(
            keys.orders_stream, {**template, "order": "not-a-uuid"}
        ): "unreadable hold: ValueError: badly formed hexadecimal UUID string",
        await redis.xadd(
            keys.orders_stream, {"type": "release", "status": "expired"}
        ): "release without a valid status or order",
    }
    good += await hold_all(purchases, sale, shoppers[2:])

    persister = Persister(redis, pool, sales, purchases, consumer="poison")
    assert await persister.drain(sale) == 8
    assert set(await orders_in_db(pool, sale)) == set(good)
    dead = await redis.xrange(keys.dead_letters)
    assert [f["dead_entry"] for _, f in dead] == list(bad)
    for _, fields in dead:
        assert fields["dead_reason"].startswith(bad[fields["dead_entry"]]), fields
    assert (await redis.xpending(keys.orders_stream, PERSISTER_GROUP))["pending"] == 0
    assert await purchases.stock.stream_backlog(sale.id) == {"length": 8, "pending": 0, "lag": 0}
    assert await persister.drain(sale) == 0


async def test_entry_failing_every_time_goes_to_dead_letters_after_max_deliveries(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    sale = await make_sale(stock=10)
    keys = room.keys(sale.id)
    shoppers = await admit(sale, 2)
    good = await hold_all(purchases, sale, shoppers[:1])
    [(_, template)] = await redis.xrange(keys.orders_stream, count=1)
    # well formed, but for a sale PostgreSQL does not have: a foreign-key violation each time
    orphan = await redis.xadd(
        keys.orders_stream,
        {**template, "order": str(uuid.uuid4()), "sale": "no-such-sale", "visitor": "someone-x"},
    )
    good += await hold_all(purchases, sale, shoppers[1:])

    persister = Persister(
        redis, pool, sales, purchases, consumer="retry", max_deliveries=2, claim_idle_ms=0
    )
    assert await persister.drain(sale) == 3
    assert set(await orders_in_db(pool, sale)) == set(good)
    pending = await redis.xpending_range(
        keys.orders_stream, PERSISTER_GROUP, min="-", max="+", count=10
    )
    assert [(p["message_id"], p["times_delivered"]) for p in pending] == [(orphan, 1)]
    assert await redis.xlen(keys.dead_letters) == 0  # one failure may be passing: kept

    assert await persister.take_over(sale) == 1  # second delivery, second failure
    dead_letters = await redis.xrange(keys.dead_letters)
    assert [f["dead_entry"] for _, f in dead_letters] == [orphan]
    dead = dead_letters[0][1]
    assert dead["dead_reason"].startswith("failed 2 times: ForeignKeyViolationError"), dead
    assert (await redis.xpending(keys.orders_stream, PERSISTER_GROUP))["pending"] == 0
    assert await persister.take_over(sale) == 0
    assert await persister.drain(sale) == 0
    assert set(await orders_in_db(pool, sale)) == set(good)


# -- replays --------------------------------------------------------------------------------


async def test_applying_the_same_batch_twice_changes_nothing(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    sale = await make_sale(stock=4)
    keys = room.keys(sale.id)
    await purchases.stock.prewarm(sale)
    await redis.hincrby(keys.inventory, "avail", 1)  # one unit PostgreSQL will refuse
    shoppers = await admit(sale, 4)
    # the first shopper holds twice and cancels one; the last hold is beyond the real stock
    ids = await hold_all(purchases, sale, [shoppers[0], *shoppers], [1] * 5, chunk=1)
    await purchases.cancel(sale, shoppers[0].visitor, ids[0])
    entries = await redis.xrange(keys.orders_stream)
    assert [f["type"] for _, f in entries] == ["hold"] * 5 + ["release"]

    persister = Persister(redis, pool, sales, purchases, consumer="replay")
    await persister._ensure_group(sale)
    await persister.apply(sale, entries)
    first = await ledger_snapshot(pool, sale)
    assert [(str(o[0]), o[1]) for o in first["orders"]] == sorted(
        [
            (ids[0], "cancelled"),
            (ids[1], "held"),
            (ids[2], "held"),
            (ids[3], "held"),
            (ids[4], "failed"),
        ]
    )
    assert first["inventory"] == (4, 3, 0)
    assert dict(first["totals"])[shoppers[0].visitor] == 1
    redis_first = {i: await redis.hgetall(keys.hold(i)) for i in ids}
    inventory_first = await redis.hgetall(keys.inventory)

    await persister.apply(sale, entries)
    assert await ledger_snapshot(pool, sale) == first
    assert {i: await redis.hgetall(keys.hold(i)) for i in ids} == redis_first
    assert await redis.hgetall(keys.inventory) == inventory_first
    assert await redis.xlen(keys.dead_letters) == 0


# -- lag ------------------------------------------------------------------------------------


async def test_lag_counts_unread_and_unacknowledged_entries(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    sale = await make_sale(stock=20)
    stream = room.keys(sale.id).orders_stream
    await hold_all(purchases, sale, await admit(sale, 7))
    survivor = Persister(redis, pool, sales, purchases, consumer="survivor", claim_idle_ms=0)

    assert await purchases.stock.stream_backlog(sale.id) == {"length": 7, "pending": 0, "lag": 7}
    await survivor._measure_lag(sale)
    assert lag_metric(sale) == 7

    # a persister reads three entries and dies before writing them: still not persisted
    crashed = Persister(redis, pool, sales, purchases, consumer="crashed", batch=3)
    await crashed._ensure_group(sale)
    [(_, read)] = await redis.xreadgroup(PERSISTER_GROUP, "crashed", {stream: ">"}, count=3)
    assert len(read) == 3
    assert await purchases.stock.stream_backlog(sale.id) == {"length": 7, "pending": 3, "lag": 4}
    await survivor._measure_lag(sale)
    assert lag_metric(sale) == 7

    assert await survivor.drain(sale) == 4
    await survivor._measure_lag(sale)
    assert lag_metric(sale) == 3
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE sale_id = $1", sale.id) == 4

    assert await survivor.take_over(sale) == 3
    await survivor._measure_lag(sale)
    assert lag_metric(sale) == 0
    assert await purchases.stock.stream_backlog(sale.id) == {"length": 7, "pending": 0, "lag": 0}
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE sale_id = $1", sale.id) == 7


async def test_a_closed_sale_whose_keys_are_gone_is_not_brought_back(
    make_sale: Callable[..., Awaitable[Sale]],
    redis: Redis,
    pool: asyncpg.Pool,
    sales: Sales,
    purchases: Purchases,
    room: WaitingRoom,
) -> None:
    sale = await make_sale()
    sale = await sales.close(sale.id)
    await room.remove(sale.id)
    persister = Persister(redis, pool, sales, purchases, consumer="tidy")
    assert sale.id in {s.id for s in await sales.recent(86_400)}
    assert await persister.drain(sale) == 0
    assert await persister.take_over(sale) == 0
    assert not await redis.exists(room.keys(sale.id).orders_stream)


# -- backlog ---------------------------------------------------------------------------------


async def test_a_backlog_drains_in_growing_batches_read_ahead_of_the_writes(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sale = await make_sale(stock=200, admission={"batch_size": 200, "max_active": 400})
    ids = await hold_all(purchases, sale, await admit(sale, 150))
    persister = Persister(redis, pool, sales, purchases, consumer="backlog", batch=10)
    reads: list[int] = []
    writing = asyncio.Event()
    read_while_writing: list[bool] = []
    real_read, real_apply = persister._read, persister.apply

    async def read(sale: Sale, count: int) -> list[Any]:
        reads.append(count)
        read_while_writing.append(writing.is_set())
        return await real_read(sale, count)

    async def apply(sale: Sale, entries: list[Any]) -> None:
        writing.set()
        await asyncio.sleep(0.01)  # a slow commit: the next read goes out meanwhile
        await real_apply(sale, entries)
        writing.clear()

    monkeypatch.setattr(persister, "_read", read)
    monkeypatch.setattr(persister, "apply", apply)
    assert await persister.drain(sale) == 150
    assert reads[:4] == [10, 20, 40, 40]  # doubling up to 4 x the batch
    assert any(read_while_writing[1:])
    assert set((await orders_in_db(pool, sale)).values()) == {"held"}
    assert set(await orders_in_db(pool, sale)) == set(ids)
    assert await purchases.stock.stream_backlog(sale.id) == {"length": 150, "pending": 0, "lag": 0}


async def test_a_failed_write_leaves_the_batch_read_ahead_for_take_over(
    redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    purchases: Purchases,
    make_sale: MakeSale,
    admit: Admit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sale = await make_sale(stock=100)
    ids = await hold_all(purchases, sale, await admit(sale, 30))
    persister = Persister(
        redis, pool, sales, purchases, consumer="flaky", batch=10, claim_idle_ms=0
    )
    real_apply = persister.apply

    async def apply(sale: Sale, entries: list[Any]) -> None:
        await asyncio.sleep(0.01)  # the read of the next batch completes meanwhile
        raise OSError("the database went away")

    monkeypatch.setattr(persister, "apply", apply)
    with pytest.raises(OSError):
        await persister.drain(sale)
    backlog = await purchases.stock.stream_backlog(sale.id)
    assert backlog["pending"] == 30 and backlog["lag"] == 0  # read, none written, none lost
    monkeypatch.setattr(persister, "apply", real_apply)
    assert await persister.take_over(sale) == 30
    assert set(await orders_in_db(pool, sale)) == set(ids)


async def test_a_payment_waits_for_a_persister_that_is_behind_rather_than_jump_the_stream(
    make_sale: MakeSale,
    admit: Admit,
    purchases: Purchases,
    sales: Sales,
    redis: Redis,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live persister behind the stream (stalled, or restarted with a backlog): a payment
    is not recorded ahead of the releases before it. A's hold is written, A cancels it (the
    release is read by the persister, which then stalls), B holds the unit A gave back and
    pays. Recording B's hold now would count A's unit twice: PostgreSQL refused B's valid
    order, refunded it, and Redis dropped the unit for good (seen in `make test`'s short chaos
    run, `persister-kill9-backlog`). Now B hears 503 `confirmation_pending`, and once the
    persister has caught up B's retry confirms the order on the same charge."""
    monkeypatch.setattr(purchase_module, "PERSIST_WAIT_S", 0.5)
    sale = await make_sale(stock=1, per_shopper_limit=1, price_cents=500)
    await purchases.stock.prewarm(sale)
    a, b = await admit(sale, 2)
    persister = Persister(redis, pool, sales, purchases, consumer="behind")
    first = (await purchases.hold(sale, a, quantity=1)).order["id"]
    assert await persister.drain(sale) == 1  # A's hold is in PostgreSQL
    await purchases.cancel(sale, a.visitor, first)
    stream = purchases.keys(sale.id).orders_stream
    read = await redis.xreadgroup(PERSISTER_GROUP, "behind", {stream: ">"})
    assert len(read[0][1]) == 1  # A's release, read and not written: the persister stalls
    second = (await purchases.hold(sale, b, quantity=1)).order["id"]

    with pytest.raises(PurchaseRefused) as pending:
        await purchases.pay(sale, b.visitor, second, "tok_approve")
    assert (pending.value.kind, pending.value.code) == (Refusal.UNAVAILABLE, "confirmation_pending")
    assert await orders_in_db(pool, sale) == {first: "held"}  # B's hold not recorded early

    assert await persister.replay(sale) == 1  # the persister wakes: A's release,
    assert await persister.drain(sale) == 1  # then B's hold
    paid = await purchases.pay(sale, b.visitor, second, "tok_approve")
    assert paid["status"] == "confirmed"
    assert await orders_in_db(pool, sale) == {first: "cancelled", second: "confirmed"}
    inventory = await redis.hgetall(purchases.keys(sale.id).inventory)
    assert (inventory["avail"], inventory["held"], inventory["sold"]) == ("0", "0", "1")
    assert (await purchases.stock.reconcile(sale)).ok
