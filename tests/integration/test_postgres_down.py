"""PostgreSQL goes away during a sale: holds go on (the hot path needs only Redis), a payment
taken meanwhile answers 503 with Retry-After instead of a 500, and the order is confirmed once
PostgreSQL is back. Found by the chaos run (`make chaos`, fault `postgres-down-15s`): every
hold failed with a 500 a second after PostgreSQL went down, because the API re-read the sale
from PostgreSQL once a second and let the error through.

The outage is real: the services reach the real PostgreSQL through a TCP relay
(tests/support/relay.py) these tests cut, so every connection fails as it would with the server
down, or stall, so every query hangs as with the server stopped by SIGSTOP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.admitter import Admitter
from flashsale.waiting_room.db import UNAVAILABLE
from flashsale.waiting_room.persister import RETRY_POSTGRES_S, Persister
from flashsale.waiting_room.purchase import PurchaseRefused, Refusal
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import SALE_TTL_S
from flashsale.waiting_room.tokens import Claims, Signer
from tests.support import Clock, app_for, only, sale_body
from tests.support.relay import Relay, relayed, through_relay

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]


async def test_holds_go_on_and_payments_answer_503_while_postgresql_is_down(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
    signer: Signer,
) -> None:
    async with through_relay(settings, redis, raw_redis, room, clock) as (services, relay):
        sale = await make_sale(stock=5, price_cents=1200)
        await services.purchases.stock.prewarm(sale)
        first, second = await admit(sale, 2)
        app = app_for(services)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            base = f"/api/sales/{sale.id}"

            async def hold(shopper: Claims) -> httpx.Response:
                return await client.post(
                    f"{base}/holds",
                    json={"quantity": 1},
                    headers={
                        "X-Visitor-Id": shopper.visitor,
                        "Authorization": f"Bearer {signer.sign(shopper)}",
                    },
                )

            assert (await hold(first)).status_code == 201  # the sale is now in hand

            await relay.cut()
            await asyncio.sleep(SALE_TTL_S + 0.2)  # the copy in hand is due for a re-read
            held = await hold(second)
            assert held.status_code == 201, held.text
            order_id = held.json()["id"]
            # the shopper's list of orders is Redis's alone meanwhile
            listed = await client.get(f"{base}/orders", headers={"X-Visitor-Id": second.visitor})
            assert listed.status_code == 200, listed.text
            assert [o["id"] for o in listed.json()["orders"]] == [order_id]
            paid = await client.post(
                f"{base}/orders/{order_id}/pay",
                headers={"X-Visitor-Id": second.visitor},
                json={"payment_token": "tok_approve"},
            )
            assert paid.status_code == 503, paid.text
            assert paid.json()["error"]["code"] == "confirmation_pending"
            assert int(paid.headers["Retry-After"]) >= 1

            await relay.mend()
            # the payment went through: once the hold is due, the sweep asks the provider and
            # confirms the order
            clock.advance(max(sale.hold_seconds, 2 * services.purchases.payments.timeout_s) + 1)
            counts = await services.purchases.sweep(sale)
            assert counts["confirmed"] == 1, counts
            again = await client.post(
                f"{base}/orders/{order_id}/pay",
                headers={"X-Visitor-Id": second.visitor},
                json={"payment_token": "tok_approve"},
            )
            assert again.status_code == 200 and again.json()["status"] == "confirmed", again.text


async def test_a_payment_retried_after_its_hold_expired_is_confirmed_not_refused(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """The shopper retries a payment answered `confirmation_pending` as told, and its hold
    expires meanwhile (the outage lasts longer than the hold): the retry asks the provider, and
    the charge that went through is confirmed, never answered "hold expired". Found by the
    chaos run (`postgres-down-15s`): shoppers were told 410 `hold_expired`, and the expiry
    sweep confirmed their orders later."""
    async with through_relay(settings, redis, raw_redis, room, clock) as (services, relay):
        purchases = services.purchases
        sale = await make_sale(stock=3, price_cents=900, hold_seconds=30)
        await services.stock.prewarm(sale)
        [shopper] = await admit(sale, 1)
        order_id = (await purchases.hold(sale, shopper, quantity=1)).order["id"]
        await relay.cut()

        async def pay_refused() -> str:
            with pytest.raises(PurchaseRefused) as refused:
                await purchases.pay(sale, shopper.visitor, order_id, "tok_approve")
            assert refused.value.kind is Refusal.UNAVAILABLE and refused.value.retry_after
            return refused.value.code

        assert await pay_refused() == "confirmation_pending"
        clock.advance(sale.hold_seconds + 1)  # the hold expires; PostgreSQL is still down
        assert await pay_refused() == "confirmation_pending"
        await relay.mend()
        paid = await purchases.pay(sale, shopper.visitor, order_id, "tok_approve")
        assert paid["status"] == "confirmed"
        status = await services.pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        assert status == "confirmed"
        assert (await purchases.stock.reconcile(sale)).ok


# -- readiness ---------------------------------------------------------------------------------


async def test_ready_while_redis_answers_whatever_postgresql_does(
    settings: Settings, redis: Redis, raw_redis: Redis, room: WaitingRoom, clock: Clock
) -> None:
    """/readyz (the chart's readinessProbe and HAProxy's health check) is 200 while Redis
    answers: with PostgreSQL down or stalled it says `degraded` and why, and the process stays
    in service, since the hot path needs only Redis and every process shares the one
    PostgreSQL. Without Redis it is 503: that process can serve nothing."""
    async with (
        through_relay(settings, redis, raw_redis, room, clock) as (services, postgres),
        relayed(settings.redis_url, 6379) as redis_relay,
    ):
        relayed_redis = Redis.from_url(
            redis_relay.url(settings.redis_url), socket_timeout=1, socket_connect_timeout=1
        )
        app = app_for(dataclasses.replace(services, redis=relayed_redis))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def ready() -> tuple[int, str, dict[str, str]]:
                answer = await client.get("/readyz")
                body = answer.json()
                return answer.status_code, body["status"], body["checks"]

            both = {"redis": "ok", "postgres": "ok"}
            assert await ready() == (200, "ready", both)

            await postgres.cut()
            code, status, checks = await ready()
            assert (code, status, checks["redis"]) == (200, "degraded", "ok")
            assert checks["postgres"].startswith("unavailable: "), checks

            await postgres.mend()
            assert await ready() == (200, "ready", both)
            postgres.stall()  # a stalled PostgreSQL: the check gives up, the process stays in
            code, status, checks = await ready()
            assert (code, status, checks) == (
                200,
                "degraded",
                {"redis": "ok", "postgres": "unavailable: TimeoutError"},
            )
            postgres.resume()

            await redis_relay.cut()
            code, status, checks = await ready()
            assert (code, status) == (503, "not_ready")
            assert checks["redis"].startswith("unavailable: "), checks

            await redis_relay.mend()
            assert await ready() == (200, "ready", both)
        await relayed_redis.aclose()


# -- nothing on the hot path waits for PostgreSQL ----------------------------------------------


async def test_holds_do_not_wait_for_a_stalled_postgresql(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
    signer: Signer,
) -> None:
    """PostgreSQL stalled (SIGSTOP: connections open, no answer; here for a minute): a hold
    whose sale is due for a re-read is answered at once from the copy in hand, and the
    shopper's orders from Redis after a short wait. The API used to re-read the sale inline,
    and every hold waited for the stalled PostgreSQL until its timeout."""
    async with through_relay(settings, redis, raw_redis, room, clock, command_timeout=60) as (
        services,
        relay,
    ):
        sale = await make_sale(stock=5, price_cents=1200)
        await services.purchases.stock.prewarm(sale)
        first, second = await admit(sale, 2)
        transport = httpx.ASGITransport(app=app_for(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def hold(shopper: Claims) -> httpx.Response:
                return await client.post(
                    f"/api/sales/{sale.id}/holds",
                    json={"quantity": 1},
                    headers={
                        "X-Visitor-Id": shopper.visitor,
                        "Authorization": f"Bearer {signer.sign(shopper)}",
                    },
                )

            assert (await hold(first)).status_code == 201  # the sale is now in hand
            relay.stall()
            await asyncio.sleep(SALE_TTL_S + 0.2)  # the copy in hand is due for a re-read
            # answered while PostgreSQL is still stalled (the re-read would wait 60 s)
            held = await asyncio.wait_for(hold(second), timeout=20)
            assert held.status_code == 201, held.text
            info = await asyncio.wait_for(client.get(f"/api/sales/{sale.id}"), timeout=20)
            assert info.status_code == 200, info.text
            listed = await asyncio.wait_for(
                client.get(
                    f"/api/sales/{sale.id}/orders", headers={"X-Visitor-Id": second.visitor}
                ),
                timeout=20,
            )
            assert listed.status_code == 200, listed.text
            assert [o["id"] for o in listed.json()["orders"]] == [held.json()["id"]]
            relay.resume()


async def test_admission_goes_on_while_postgresql_is_down_or_stalled(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
) -> None:
    """The admitter lists the live sales from PostgreSQL, but admits through Redis alone: with
    PostgreSQL down, then stalled, it goes on admitting on the list in hand. It used to re-read
    the list inline at every refresh, so admission stopped for the whole outage."""
    async with through_relay(settings, redis, raw_redis, room, clock, command_timeout=60) as (
        services,
        relay,
    ):
        sale = await services.sales.create(
            sale_body(
                admission={
                    "batch_size": 2,
                    "batch_interval_ms": 50,
                    "max_active": 50,
                    "admission_ttl_seconds": 600,
                    "abandon_after_seconds": 600,
                }
            )
        )
        admitter = Admitter(
            only(services.sales, sale.id),
            room,
            services.stock,
            tick_ms=50,
            refresh_seconds=0,  # a re-read at every tick
        )
        clock.advance(sale.opens_at.timestamp() - clock() + 1)
        joined = 0

        async def more_are_admitted() -> int:
            """Two more join; ticks until they are in (each tick moves the room's clock past
            the batch interval); how many are admitted."""
            nonlocal joined
            for _ in range(2):
                joined += 1
                outcome = await room.join(sale.id, f"v{joined}", "198.51.100.7")
                assert outcome.outcome == "ok"
            for _ in range(10):
                clock.advance(0.1)
                await asyncio.wait_for(admitter.step(), timeout=20)
                admitted = (await room.counters(sale.id)).admitted_total
                if admitted == joined:
                    break
            return admitted

        assert await more_are_admitted() == 2
        await relay.cut()
        assert await more_are_admitted() == 4
        await relay.mend()
        assert await more_are_admitted() == 6
        relay.stall()
        assert await more_are_admitted() == 8
        relay.resume()


# -- the persister -----------------------------------------------------------------------------


async def test_the_persister_expires_holds_and_catches_up_through_an_outage(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """PostgreSQL down for many retries: the persister goes on releasing expired holds (Redis
    alone; their units are offered again at once), never dead-letters an entry because the
    database was unreachable, and once it answers writes what it could not, without waiting
    for a take-over (here: never). It used to write a failing batch entry by entry and send
    each to the dead letters after `max_deliveries` failures, and to stop sweeping too."""
    async with through_relay(settings, redis, raw_redis, room, clock) as (services, relay):
        sale = await make_sale(stock=4, price_cents=500, hold_seconds=30)
        await services.stock.prewarm(sale)
        shoppers = await admit(sale, 3)
        persister = Persister(
            redis,
            services.pool,
            only(services.sales, sale.id),
            services.purchases,
            consumer="outage",
            claim_idle_ms=3_600_000,  # no take-over: catching up is this consumer's own work
            max_deliveries=1,  # the first failure would dead-letter a poison entry
            sweep_interval_ms=0,
            refresh_seconds=0,
        )
        keys = room.keys(sale.id)
        await persister.step()  # the sale is listed
        await relay.cut()
        held = [(await services.purchases.hold(sale, s, quantity=1)).order["id"] for s in shoppers]
        assert await redis.hget(keys.inventory, "avail") == "1"
        for _ in range(3):
            await persister.step()
            await asyncio.sleep(RETRY_POSTGRES_S)
        clock.advance(sale.hold_seconds + 1)
        await persister.step()  # the sweep needs no PostgreSQL
        assert await redis.hget(keys.inventory, "avail") == "4"
        assert await redis.xlen(keys.dead_letters) == 0

        await relay.mend()
        await asyncio.sleep(RETRY_POSTGRES_S)
        for _ in range(20):
            await persister.step()
            backlog = await services.stock.stream_backlog(sale.id)
            if backlog["lag"] == 0 and backlog["pending"] == 0:
                break
        assert backlog == {"length": 6, "lag": 0, "pending": 0}
        statuses = await services.pool.fetch(
            "SELECT id::text AS id, status FROM orders WHERE sale_id = $1", sale.id
        )
        assert {r["id"]: r["status"] for r in statuses} == {o: "released" for o in held}
        assert await redis.xlen(keys.dead_letters) == 0
        report = await services.stock.reconcile(sale)
        assert report.ok, report.differences
        await persister.close()


async def test_the_persister_expires_holds_while_postgresql_is_stalled(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """A stalled PostgreSQL holds the drain until the sale's timeout gives up on it; the sweep
    is a task of its own, so expired holds are released meanwhile, and what the given-up drain
    had read is written first once PostgreSQL answers."""
    async with through_relay(settings, redis, raw_redis, room, clock, command_timeout=60) as (
        services,
        relay,
    ):
        sale = await make_sale(stock=3, price_cents=500, hold_seconds=30)
        await services.stock.prewarm(sale)
        shoppers = await admit(sale, 2)
        persister = Persister(
            redis,
            services.pool,
            only(services.sales, sale.id),
            services.purchases,
            consumer="stall",
            claim_idle_ms=3_600_000,
            sweep_interval_ms=0,
            refresh_seconds=0,
            sale_timeout_seconds=2,
        )
        keys = room.keys(sale.id)
        await persister.step()
        relay.stall()
        held = [(await services.purchases.hold(sale, s, quantity=1)).order["id"] for s in shoppers]
        await persister.step()  # the drain reads the two holds and hangs
        clock.advance(sale.hold_seconds + 1)
        for _ in range(10):
            await persister.step()
            if await redis.hget(keys.inventory, "avail") == "3":
                break
        assert await redis.hget(keys.inventory, "avail") == "3"  # released, PostgreSQL stalled
        relay.resume()
        for _ in range(40):
            await persister.step()
            backlog = await services.stock.stream_backlog(sale.id)
            if backlog["lag"] == 0 and backlog["pending"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (backlog["lag"], backlog["pending"]) == (0, 0)
        statuses = await services.pool.fetch(
            "SELECT id::text AS id, status FROM orders WHERE sale_id = $1", sale.id
        )
        assert {r["id"]: r["status"] for r in statuses} == {o: "released" for o in held}
        await persister.close()


# -- a change of stock whose commit fails ------------------------------------------------------


class CutAfterRestock(WaitingRoom):
    """A room whose next restock cuts PostgreSQL off right after Redis took the new stock:
    before the transaction that changes it in PostgreSQL commits."""

    relay: Relay | None = None

    async def restock(self, sale_id: str, stock: int) -> list[Any]:
        result = await super().restock(sale_id, stock)
        if self.relay is not None:
            await self.relay.cut()
            self.relay = None
        return result


async def test_a_stock_change_whose_commit_failed_is_not_applied_twice_by_the_retry(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    clock: Clock,
    signer: Signer,
    pool: asyncpg.Pool,
) -> None:
    """Redis changes the stock inside the transaction that changes PostgreSQL's; PostgreSQL
    lost before the commit leaves Redis at the new stock and PostgreSQL at the old. The
    admin's (or the operator's) retry then changes it in PostgreSQL, and Redis stays at the
    new stock. Redis used to be given the change, not the stock, and applied it twice: a sale
    of 10 raised to 15 offered 20 in Redis, which PostgreSQL then refused as oversold."""
    room = CutAfterRestock(redis, settings, signer, clock=clock)
    async with through_relay(settings, redis, raw_redis, room, clock) as (services, relay):
        sale = await services.sales.create(sale_body(stock=10))
        await services.stock.prewarm(sale)
        keys = room.keys(sale.id)
        room.relay = relay
        with pytest.raises(UNAVAILABLE):
            await services.sales.update(sale.id, {"stock": 15})
        assert (
            await pool.fetchval("SELECT stock FROM sale_inventory WHERE sale_id = $1", sale.id)
            == 10
        )
        assert await redis.hmget(keys.inventory, ["stock", "avail"]) == ["15", "15"]

        await relay.mend()
        await services.sales.update(sale.id, {"stock": 15})  # the retry
        assert (
            await pool.fetchval("SELECT stock FROM sale_inventory WHERE sale_id = $1", sale.id)
            == 15
        )
        assert await redis.hmget(keys.inventory, ["stock", "avail"]) == ["15", "15"]
        report = await services.stock.reconcile(await services.sales.get(sale.id))
        assert report.ok, report.differences
