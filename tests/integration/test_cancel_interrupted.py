"""Cancelling a confirmed order is three writes in three places: the refund (the payment
provider), the stock back (Redis), the order `cancelled` (PostgreSQL). It used to refund
first, so PostgreSQL down (or the process gone) right after the refund left an order
refunded but still `confirmed`, its units sold, until the shopper happened to retry.

Now PostgreSQL records the intent first (`cancelling`), then the refund is asked for, then
the units return; each step can be run again. These tests interrupt it at every point: with
PostgreSQL really unreachable (a TCP relay the test cuts, tests/support/relay.py), the
provider failing, and the request abandoned half-way as a killed process leaves it; each
time nothing is refunded that PostgreSQL does not know of, and the shopper's retry or the
persister's sweep finishes the cancellation with the stock where it belongs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.payments import (
    Charge,
    CircuitBreaker,
    GuardedProvider,
    PaymentStatus,
    SimulatedProvider,
)
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import PurchaseRefused, Refusal
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims
from tests.support import Clock, app_for, only
from tests.support.relay import Relay, through_relay

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]
Hook = Callable[[], Awaitable[None]]


class Interrupted:
    """The simulated provider, with a hook run before and one after each refund."""

    def __init__(self, inner: SimulatedProvider) -> None:
        self.inner = inner
        self.before_refund: Hook | None = None
        self.after_refund: Hook | None = None

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        return await self.inner.charge(order_id, amount_cents, currency, token)

    async def status(self, order_id: str) -> PaymentStatus:
        return await self.inner.status(order_id)

    async def refund(self, order_id: str) -> None:
        if self.before_refund:
            await self.before_refund()
        await self.inner.refund(order_id)
        if self.after_refund:
            await self.after_refund()


class Shop:
    """One confirmed order of 2 units (of 5) on services that reach PostgreSQL through a relay,
    and how to read it in every place."""

    def __init__(
        self, services: Services, relay: Relay, provider: Interrupted, sale: Sale, visitor: str
    ) -> None:
        self.services, self.relay, self.provider = services, relay, provider
        self.sale, self.visitor = sale, visitor
        self.order_id = ""

    async def in_postgres(self) -> tuple[str, int]:
        """The order's status, and the units the sale's inventory counts sold."""
        pool = self.services.pool
        status = await pool.fetchval("SELECT status FROM orders WHERE id = $1", self.order_id)
        sold = await pool.fetchval(
            "SELECT sold FROM sale_inventory WHERE sale_id = $1", self.sale.id
        )
        return status, sold

    async def in_redis(self) -> tuple[str, int, int]:
        """The hold's status, and the sale's units available and sold."""
        keys = self.services.room.keys(self.sale.id)
        redis = self.services.redis
        status = await redis.hget(keys.hold(self.order_id), "status")
        avail, sold = await redis.hmget(keys.inventory, ["avail", "sold"])
        return status, int(avail), int(sold)

    async def paid(self) -> PaymentStatus:
        return await self.provider.inner.status(self.order_id)

    async def cancel(self) -> dict[str, object]:
        return await self.services.purchases.cancel(self.sale, self.visitor, self.order_id)

    async def reconciled(self) -> list[str]:
        return (await self.services.stock.reconcile(self.sale)).differences


@pytest.fixture
async def shop(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
) -> AsyncIterator[Shop]:
    provider = Interrupted(
        SimulatedProvider(redis, f"{settings.redis_prefix}:{secrets.token_hex(4)}")
    )
    payments = GuardedProvider(provider, CircuitBreaker(threshold=100), timeout_s=5)
    async with through_relay(settings, redis, raw_redis, room, clock, payments=payments) as (
        services,
        relay,
    ):
        sale = await make_sale(stock=5, price_cents=700)
        await services.stock.prewarm(sale)
        [shopper] = await admit(sale, 1)
        made = Shop(services, relay, provider, sale, shopper.visitor)
        held = await services.purchases.hold(sale, shopper, quantity=2)
        made.order_id = held.order["id"]
        paid = await services.purchases.pay(sale, shopper.visitor, made.order_id, "tok_approve")
        assert paid["status"] == "confirmed"
        assert await made.in_postgres() == ("confirmed", 2)
        yield made


async def test_postgresql_down_before_the_cancellation_refunds_nothing(shop: Shop) -> None:
    await shop.relay.cut()
    transport = httpx.ASGITransport(app=app_for(shop.services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        url = f"/api/sales/{shop.sale.id}/orders/{shop.order_id}/cancel"
        answer = await client.post(url, headers={"X-Visitor-Id": shop.visitor})
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) >= 1
        assert await shop.paid() is PaymentStatus.PAID  # nothing refunded
        assert await shop.in_redis() == ("confirmed", 3, 2)

        await shop.relay.mend()
        answer = await client.post(url, headers={"X-Visitor-Id": shop.visitor})
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text
    assert await shop.paid() is PaymentStatus.REFUNDED
    assert await shop.in_postgres() == ("cancelled", 0)
    assert await shop.in_redis() == ("cancelled", 5, 0)
    assert await shop.reconciled() == []


async def test_postgresql_lost_right_after_the_refund(shop: Shop) -> None:
    """The refund made, PostgreSQL gone before it records the end: the order is `cancelling`
    there (never `confirmed` with the money back), the stock is back in Redis, and the
    release the stream carries ends it in PostgreSQL once it answers."""
    shop.provider.after_refund = shop.relay.cut
    cancelled = await shop.cancel()
    assert cancelled["status"] == "cancelled"
    assert await shop.paid() is PaymentStatus.REFUNDED
    assert await shop.in_redis() == ("cancelled", 5, 0)

    await shop.relay.mend()
    assert await shop.in_postgres() == ("cancelling", 2)
    services = shop.services
    persister = Persister(
        services.redis,
        services.pool,
        only(services.sales, shop.sale.id),
        services.purchases,
        consumer="cancel",
    )
    assert await persister.drain(shop.sale) == 2  # the hold, then the cancellation
    assert await shop.in_postgres() == ("cancelled", 0)
    assert await shop.reconciled() == []


async def test_the_process_gone_between_the_record_and_the_refund(shop: Shop) -> None:
    """The cancellation recorded, then the process dies before the refund (its request is
    abandoned there; nothing after that point runs): the sweep finds the `cancelling` order
    and finishes it, refund first."""
    reached = asyncio.Event()

    async def die() -> None:
        reached.set()
        await asyncio.Event().wait()  # never returns: the process is gone

    shop.provider.before_refund = die
    cancelling = asyncio.ensure_future(shop.cancel())
    await reached.wait()
    cancelling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelling
    assert await shop.in_postgres() == ("cancelling", 2)
    assert await shop.paid() is PaymentStatus.PAID
    assert await shop.in_redis() == ("confirmed", 3, 2)

    shop.provider.before_refund = None
    counts = await shop.services.purchases.settle(shop.sale, cancelling_after_s=0)
    assert counts["cancelled"] == 1, counts
    assert await shop.paid() is PaymentStatus.REFUNDED
    assert await shop.in_redis() == ("cancelled", 5, 0)
    assert await shop.in_postgres() == ("cancelled", 0)
    assert await shop.reconciled() == []
    # the shopper's late retry finds it over
    with pytest.raises(PurchaseRefused) as again:
        await shop.cancel()
    assert (again.value.kind, again.value.code) == (Refusal.CONFLICT, "order_cancelled")


async def test_a_refund_the_provider_cannot_make_now_is_finished_by_the_retry(
    shop: Shop,
) -> None:
    """The provider down at the refund: 503 `refund_pending`, the order `cancelling` with its
    units still sold; the shopper's retry, once the provider is back, finishes it (and the
    sweep leaves alone a cancellation that is younger than a payment's time)."""
    await shop.provider.inner.set_mode("error")
    with pytest.raises(PurchaseRefused) as pending:
        await shop.cancel()
    assert (pending.value.kind, pending.value.code) == (Refusal.UNAVAILABLE, "refund_pending")
    assert pending.value.retry_after
    assert await shop.in_postgres() == ("cancelling", 2)
    assert await shop.in_redis() == ("confirmed", 3, 2)
    assert (await shop.services.purchases.settle(shop.sale))["cancelled"] == 0  # too young

    await shop.provider.inner.set_mode("up")
    cancelled = await shop.cancel()
    assert cancelled["status"] == "cancelled"
    assert await shop.paid() is PaymentStatus.REFUNDED
    assert await shop.in_postgres() == ("cancelled", 0)
    assert await shop.in_redis() == ("cancelled", 5, 0)
    assert await shop.reconciled() == []
