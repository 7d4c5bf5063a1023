"""Failure modes of buying, on real Redis and PostgreSQL: a payment provider outage (the
circuit breaker, holds kept, the sweeper's caution) and PostgreSQL refusing stock that Redis
wrongly believed in."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.db import connect_pool
from flashsale.waiting_room.ledger import REFUSALS
from flashsale.waiting_room.payments import (
    Charge,
    CircuitBreaker,
    GuardedProvider,
    PaymentStatus,
    SimulatedProvider,
)
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import HOLD_GRACE_MS, PurchaseRefused, Purchases, Refusal
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims, Signer
from tests.support import Clock, free_port

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]
SOLD_OUT = REFUSALS["inventory_never_oversold"]


class CountingProvider:
    """A PaymentProvider: the real simulated provider, counting the calls that reach it."""

    def __init__(self, inner: SimulatedProvider) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def set_outage(self, down: bool) -> None:
        await self.inner.set_outage(down)

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        self.calls["charge"] += 1
        return await self.inner.charge(order_id, amount_cents, currency, token)

    async def status(self, order_id: str) -> PaymentStatus:
        self.calls["status"] += 1
        return await self.inner.status(order_id)

    async def refund(self, order_id: str) -> None:
        self.calls["refund"] += 1
        await self.inner.refund(order_id)


def guarded_services(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    *,
    threshold: int,
    timeout_s: float = 2.0,
    slow_s: float = 30.0,
) -> tuple[Services, CountingProvider, Clock]:
    """Services whose provider is a counted simulated provider with its own outage switch,
    behind a breaker on a frozen clock the test moves."""
    simulated = SimulatedProvider(
        redis, f"{settings.redis_prefix}:{secrets.token_hex(4)}", slow_s=slow_s
    )
    provider = CountingProvider(simulated)
    breaker_clock = Clock()
    breaker_clock.freeze()
    breaker = CircuitBreaker(threshold=threshold, reset_after=10.0, clock=breaker_clock)
    payments = GuardedProvider(provider, breaker, timeout_s=timeout_s)
    services = Services.build(
        settings, redis, raw_redis, pool, room=room, sales=sales, payments=payments
    )
    return services, provider, breaker_clock


async def stream_types(redis: Redis, room: WaitingRoom, sale: Sale) -> list[str]:
    return [f["type"] for _, f in await redis.xrange(room.keys(sale.id).orders_stream)]


async def inventory(redis: Redis, room: WaitingRoom, sale: Sale) -> dict[str, int]:
    raw = await redis.hgetall(room.keys(sale.id).inventory)
    return {k: int(raw[k]) for k in ("avail", "held", "sold")}


async def pay_refused(
    purchases: Purchases, sale: Sale, visitor: str, order_id: str, token: str = "tok_approve"
) -> PurchaseRefused:
    with pytest.raises(PurchaseRefused) as refused:
        await purchases.pay(sale, visitor, order_id, token)
    return refused.value


# -- the payment provider is down --------------------------------------------------------------


async def test_breaker_opens_fails_fast_keeps_the_hold_and_recovers(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
    clock: Clock,
) -> None:
    services, provider, breaker_clock = guarded_services(
        settings, redis, raw_redis, pool, room, sales, threshold=3
    )
    purchases, breaker = services.purchases, services.purchases.payments.breaker
    sale = await make_sale(stock=5, price_cents=1000)
    shopper, *others = await admit(sale, 3)
    order = (await purchases.hold(sale, shopper, quantity=1)).order
    other_orders = [(await purchases.hold(sale, o, quantity=1)).order for o in others]
    keys = room.keys(sale.id)
    hold_key = keys.hold(order["id"])
    # five seconds of the hold left when the provider goes down
    clock.advance(sale.hold_seconds - 5)
    clock.freeze()
    now_ms = room.now_ms()
    await provider.set_outage(True)
    try:
        # one shopper retrying one order is one failing order: the breaker stays closed
        for attempt in (1, 2, 3):
            refused = await pay_refused(purchases, sale, shopper.visitor, order["id"])
            assert (refused.kind, refused.code, refused.retry_after) == (
                Refusal.UNAVAILABLE,
                "payment_unavailable",
                1.0,  # closed: retry in a second
            )
            assert provider.calls["charge"] == attempt
            # the hold survives each failure, its expiry pushed past the retry plus a grace
            assert await redis.hget(hold_key, "status") == "held"
            assert int(await redis.hget(hold_key, "expires_ms")) == now_ms + 1000 + HOLD_GRACE_MS
        assert breaker.state == "closed"
        # the provider fails other shoppers' orders too: the third order opens it, and that
        # refusal says when it half-opens
        for n, (other, other_order) in enumerate(zip(others, other_orders, strict=True)):
            refused = await pay_refused(purchases, sale, other.visitor, other_order["id"])
            assert refused.retry_after == (1.0 if n == 0 else breaker.reset_after)
        assert breaker.state == "open"
        assert provider.calls["charge"] == 5

        # open: refused at once, the provider is not called at all
        for _ in range(3):
            refused = await pay_refused(purchases, sale, shopper.visitor, order["id"])
            assert (refused.kind, refused.code, refused.retry_after) == (
                Refusal.UNAVAILABLE,
                "payment_unavailable",
                10.0,
            )
        assert provider.calls["charge"] == 5
        breaker_clock.advance(4)
        refused = await pay_refused(purchases, sale, shopper.visitor, order["id"])
        assert refused.retry_after == 6.0
        assert provider.calls["charge"] == 5
    finally:
        await provider.set_outage(False)

    expires = now_ms + 10_000 + HOLD_GRACE_MS  # never pulled back in by a shorter retry
    assert (await redis.hgetall(hold_key)).items() >= {
        "status": "held",
        "expires_ms": str(expires),
        "pay_attempted": "1",
    }.items()
    assert await redis.zscore(keys.holds, order["id"]) == expires
    assert await inventory(redis, room, sale) == {"avail": 2, "held": 3, "sold": 0}
    assert await stream_types(redis, room, sale) == ["hold"] * 3  # no release was ever emitted
    assert (await purchases.order(sale, shopper.visitor, order["id"]))["status"] == "held"
    assert await purchases.sweep(sale) == {"expired": 0, "confirmed": 0, "kept": 0, "cancelled": 0}
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE sale_id = $1", sale.id) == 0

    # the outage is over but the breaker still refuses until reset_after has passed
    refused = await pay_refused(purchases, sale, shopper.visitor, order["id"])
    assert refused.code == "payment_unavailable"
    assert provider.calls["charge"] == 5
    breaker_clock.advance(6)
    assert breaker.state == "half_open"
    paid = await purchases.pay(sale, shopper.visitor, order["id"], "tok_approve")
    assert paid["status"] == "confirmed"
    assert provider.calls["charge"] == 6
    assert breaker.state == "closed"
    assert await provider.inner.status(order["id"]) is PaymentStatus.PAID
    row = await pool.fetchrow("SELECT status, payment_ref FROM orders WHERE id = $1", order["id"])
    assert (row["status"], row["payment_ref"]) == ("confirmed", f"sim-{order['id']}")
    assert await inventory(redis, room, sale) == {"avail": 2, "held": 2, "sold": 1}
    # and the others pay at once, the breaker closed again
    for other, other_order in zip(others, other_orders, strict=True):
        paid = await purchases.pay(sale, other.visitor, other_order["id"], "tok_approve")
        assert paid["status"] == "confirmed"
    assert await inventory(redis, room, sale) == {"avail": 2, "held": 0, "sold": 3}


async def test_sweeper_keeps_holds_that_tried_to_pay_while_the_provider_is_down(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
    clock: Clock,
) -> None:
    services, provider, breaker_clock = guarded_services(
        settings, redis, raw_redis, pool, room, sales, threshold=2, timeout_s=0.2, slow_s=5
    )
    purchases, breaker = services.purchases, services.purchases.payments.breaker
    sale = await make_sale(stock=5, price_cents=700, hold_seconds=60)
    paid_late, never_paid = await admit(sale, 2)
    a = (await purchases.hold(sale, paid_late, quantity=1)).order["id"]
    b = (await purchases.hold(sale, never_paid, quantity=1)).order["id"]
    clock.freeze()
    keys = room.keys(sale.id)
    try:
        # the provider is slow: the money moves but the answer comes too late
        await provider.inner.set_mode("slow")
        refused = await pay_refused(purchases, sale, paid_late.visitor, a)
        assert refused.code == "payment_unavailable"
        assert await provider.inner.status(a) is PaymentStatus.PAID
        await provider.set_outage(True)
        refused = await pay_refused(purchases, sale, never_paid.visitor, b)
        assert refused.code == "payment_unavailable"
        assert breaker.state == "open"
        assert provider.calls == {"charge": 2}

        clock.advance(600)  # both holds are long past their expiry
        assert len(await redis.zrangebyscore(keys.holds, "-inf", room.now_ms())) == 2
        # breaker open: the provider cannot be asked whether they were paid, so both stay
        assert await purchases.sweep(sale) == {
            "expired": 0,
            "confirmed": 0,
            "kept": 2,
            "cancelled": 0,
        }
        assert provider.calls == {"charge": 2}
        # half open: the one trial status call fails in the outage; still both stay
        breaker_clock.advance(10)
        assert await purchases.sweep(sale) == {
            "expired": 0,
            "confirmed": 0,
            "kept": 2,
            "cancelled": 0,
        }
        assert provider.calls == {"charge": 2, "status": 1}
        assert breaker.state == "open"
        for order_id in (a, b):
            assert await redis.hget(keys.hold(order_id), "status") == "held"
        assert await inventory(redis, room, sale) == {"avail": 3, "held": 2, "sold": 0}
        assert await stream_types(redis, room, sale) == ["hold", "hold"]
    finally:
        await provider.set_outage(False)

    # the provider answers again: the paid hold is confirmed, the unpaid one released
    breaker_clock.advance(10)
    assert await purchases.sweep(sale) == {"expired": 1, "confirmed": 1, "kept": 0, "cancelled": 0}
    assert provider.calls == {"charge": 2, "status": 3}
    assert await redis.hget(keys.hold(a), "status") == "confirmed"
    assert (await redis.hgetall(keys.hold(b))).items() >= {
        "status": "released",
        "reason": "hold expired",
    }.items()
    assert await inventory(redis, room, sale) == {"avail": 4, "held": 0, "sold": 1}
    persister = Persister(redis, pool, sales, purchases, consumer="sweep-test")
    assert await persister.drain(sale) == 3  # two holds and b's release
    rows = {
        str(r["id"]): (r["status"], r["payment_ref"])
        for r in await pool.fetch(
            "SELECT id, status, payment_ref FROM orders WHERE sale_id = $1", sale.id
        )
    }
    assert rows == {a: ("confirmed", f"late-{a}"), b: ("released", None)}
    assert (await purchases.stock.reconcile(sale)).ok


async def test_pay_over_http_during_an_outage_answers_503_with_retry_after(
    client: httpx.AsyncClient,
    services: Services,
    make_sale: MakeSale,
    admit: Admit,
    signer: Signer,
) -> None:
    breaker = services.purchases.payments.breaker
    sale = await make_sale(stock=10, price_cents=1200)
    shoppers = await admit(sale, breaker.threshold + 1)
    base = f"/api/sales/{sale.id}"
    orders = []
    for shopper in shoppers:
        response = await client.post(
            f"{base}/holds",
            json={"quantity": 1},
            headers={"Authorization": f"Bearer {signer.sign(shopper)}"},
        )
        assert response.status_code == 201, response.text
        orders.append((shopper.visitor, response.json()["id"]))
    provider = services.purchases.payments.provider
    assert isinstance(provider, SimulatedProvider)

    async def pay(visitor: str, order_id: str) -> httpx.Response:
        return await client.post(
            f"{base}/orders/{order_id}/pay",
            headers={"X-Visitor-Id": visitor},
            json={"payment_token": "tok_approve"},
        )

    await provider.set_outage(True)
    try:
        answers = [await pay(*order) for order in orders]
    finally:
        await provider.set_outage(False)
    for number, response in enumerate(answers):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "payment_unavailable" and error["message"]
        # closed: retry in a second; once `threshold` orders failed, open: when it half-opens
        expected = 1 if number < breaker.threshold - 1 else int(breaker.reset_after)
        assert response.headers["Retry-After"] == str(expected)
    assert breaker.state == "open"
    for visitor, order_id in orders:
        order = await client.get(f"{base}/orders/{order_id}", headers={"X-Visitor-Id": visitor})
        assert order.json()["status"] == "held"


async def test_one_shopper_failing_payments_does_not_open_it_for_everybody(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """Declined cards and invalid tokens are the shopper's answers, not the provider's
    failures: a shopper spamming them (hold after hold) never opens the breaker, and the next
    shopper pays at once."""
    services, provider, _ = guarded_services(
        settings, redis, raw_redis, pool, room, sales, threshold=2
    )
    purchases, breaker = services.purchases, services.purchases.payments.breaker
    sale = await make_sale(stock=50, per_shopper_limit=1, price_cents=500)
    spammer, honest = await admit(sale, 2)
    tokens = ["tok_decline", "tok_error", "tok_timeout", "not-a-token", ""] * 4
    for token in tokens:
        order = (await purchases.hold(sale, spammer, quantity=1)).order
        refused = await pay_refused(purchases, sale, spammer.visitor, order["id"], token)
        assert (refused.kind, refused.code) == (Refusal.DECLINED, "payment_declined")
        assert refused.order is not None
        reason = refused.order["reason"]
        assert reason == "payment declined: " + (
            "card declined" if token == "tok_decline" else "invalid payment token"
        )
        assert breaker.state == "closed"
    assert provider.calls["charge"] == len(tokens)
    order = (await purchases.hold(sale, honest, quantity=1)).order
    paid = await purchases.pay(sale, honest.visitor, order["id"], "tok_approve")
    assert paid["status"] == "confirmed"


async def test_a_provider_that_cannot_be_reached_counts_and_the_breaker_recovers(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """A connection the provider refuses (here the simulated provider's own store, a Redis on
    a port where nothing listens: a redis-py ConnectionError, which is no OSError) is a
    provider-side failure: it opens the breaker, a trial that meets it again re-opens it, and
    once the provider answers, the trial closes it and payments go through."""
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True)
    prefix = f"{settings.redis_prefix}:{secrets.token_hex(4)}"
    reachable, down = SimulatedProvider(redis, prefix), SimulatedProvider(unreachable, prefix)
    breaker_clock = Clock()
    breaker_clock.freeze()
    breaker = CircuitBreaker(threshold=2, reset_after=10.0, clock=breaker_clock)
    payments = GuardedProvider(down, breaker, timeout_s=2.0)
    services = Services.build(
        settings, redis, raw_redis, pool, room=room, sales=sales, payments=payments
    )
    purchases = services.purchases
    sale = await make_sale(stock=5, price_cents=500)
    shoppers = await admit(sale, 3)
    orders = [(await purchases.hold(sale, s, quantity=1)).order["id"] for s in shoppers]
    try:
        for shopper, order_id in zip(shoppers[:2], orders[:2], strict=True):
            refused = await pay_refused(purchases, sale, shopper.visitor, order_id)
            assert refused.code == "payment_unavailable"
        assert breaker.state == "open"
        breaker_clock.advance(10)
        refused = await pay_refused(purchases, sale, shoppers[2].visitor, orders[2])
        assert refused.code == "payment_unavailable"
        assert refused.retry_after == 10.0  # the trial met the same failure: open again
        assert breaker.state == "open"
    finally:
        await unreachable.aclose()
    payments.provider = reachable  # the provider is back
    breaker_clock.advance(10)
    for shopper, order_id in zip(shoppers, orders, strict=True):
        paid = await purchases.pay(sale, shopper.visitor, order_id, "tok_approve")
        assert paid["status"] == "confirmed"
    assert breaker.state == "closed"


# -- PostgreSQL is the final guard ---------------------------------------------------------


async def test_database_refuses_stock_redis_wrongly_believes_in(
    client: httpx.AsyncClient,
    purchases: Purchases,
    redis: Redis,
    room: WaitingRoom,
    pool: asyncpg.Pool,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    sale = await make_sale(stock=10)
    assert (await purchases.stock.prewarm(sale))["outcome"] == "ok"
    keys = room.keys(sale.id)
    assert await redis.hincrby(keys.inventory, "avail", 5) == 15  # Redis now believes in 15
    shoppers = await admit(sale, 15)
    orders = [(await purchases.hold(sale, s, quantity=1)).order for s in shoppers]
    assert [o["status"] for o in orders] == ["held"] * 15
    assert await inventory(redis, room, sale) == {"avail": 0, "held": 15, "sold": 0}

    persister = Persister(redis, pool, sales, purchases, consumer="guard")
    assert await persister.drain(sale) == 15
    rows = await pool.fetch("SELECT id, status, reason FROM orders WHERE sale_id = $1", sale.id)
    status = {str(r["id"]): (r["status"], r["reason"]) for r in rows}
    first, late = orders[:10], orders[10:]
    assert {o["id"]: status[o["id"]] for o in first} == {o["id"]: ("held", None) for o in first}
    assert {o["id"]: status[o["id"]] for o in late} == {o["id"]: ("failed", SOLD_OUT) for o in late}
    assert "sold out" in SOLD_OUT
    inv = await pool.fetchrow(
        "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
    )
    assert (inv["stock"], inv["held"], inv["sold"]) == (10, 10, 0)
    assert inv["held"] + inv["sold"] <= inv["stock"]
    totals = await pool.fetchval(
        "SELECT sum(units) FROM shopper_totals WHERE sale_id = $1", sale.id
    )
    assert totals == 10

    # in Redis the refused holds end failed and their phantom units do not come back
    assert await inventory(redis, room, sale) == {"avail": 0, "held": 10, "sold": 0}
    assert await redis.zcard(keys.holds) == 10
    for shopper, order in zip(shoppers[10:], late, strict=True):
        fields = await redis.hgetall(keys.hold(order["id"]))
        assert (fields["status"], fields["reason"]) == ("failed", SOLD_OUT)
        assert await redis.get(keys.shopper_units(shopper.visitor)) == "0"
        seen = await purchases.order(sale, shopper.visitor, order["id"])
        assert (seen["status"], seen["reason"]) == ("failed", SOLD_OUT)
        assert [(o["id"], o["status"]) for o in await purchases.orders(sale, shopper.visitor)] == [
            (order["id"], "failed")
        ]
    assert await stream_types(redis, room, sale) == ["hold"] * 15  # no release: nothing returns
    assert (await purchases.stock.reconcile(sale)).ok

    # and over HTTP
    loser, winner = shoppers[-1], shoppers[0]
    listed = await client.get(
        f"/api/sales/{sale.id}/orders", headers={"X-Visitor-Id": loser.visitor}
    )
    assert listed.status_code == 200, listed.text
    assert [(o["id"], o["status"], o["reason"]) for o in listed.json()["orders"]] == [
        (late[-1]["id"], "failed", SOLD_OUT)
    ]
    one = await client.get(
        f"/api/sales/{sale.id}/orders/{late[-1]['id']}", headers={"X-Visitor-Id": loser.visitor}
    )
    assert one.json()["status"] == "failed"
    listed = await client.get(
        f"/api/sales/{sale.id}/orders", headers={"X-Visitor-Id": winner.visitor}
    )
    assert [o["status"] for o in listed.json()["orders"]] == ["held"]


async def test_paid_hold_beyond_stock_is_refused_at_confirmation_and_refunded(
    services: Services,
    redis: Redis,
    room: WaitingRoom,
    pool: asyncpg.Pool,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    purchases = services.purchases
    provider = purchases.payments.provider
    sale = await make_sale(stock=2, price_cents=900)
    await purchases.stock.prewarm(sale)
    await redis.hincrby(room.keys(sale.id).inventory, "avail", 1)
    shoppers = await admit(sale, 3)
    orders = [(await purchases.hold(sale, s, quantity=1)).order["id"] for s in shoppers]
    for shopper, order_id in zip(shoppers[:2], orders[:2], strict=True):
        assert (await purchases.pay(sale, shopper.visitor, order_id, "tok_approve"))[
            "status"
        ] == "confirmed"
    # the third was charged, but PostgreSQL has no stock left for it: refunded, failed
    last, last_order = shoppers[2], orders[2]
    refused = await pay_refused(purchases, sale, last.visitor, last_order)
    assert (refused.kind, refused.code) == (Refusal.CONFLICT, "order_failed")
    assert "refunded" in refused.message
    assert refused.order is not None
    assert (refused.order["status"], refused.order["reason"]) == ("failed", SOLD_OUT)
    assert await provider.status(last_order) is PaymentStatus.REFUNDED
    events = await pool.fetch(
        "SELECT status FROM order_events WHERE order_id = $1 ORDER BY id", last_order
    )
    assert [e["status"] for e in events] == ["failed"]
    # a retried payment does not charge again and still ends failed
    again = await pay_refused(purchases, sale, last.visitor, last_order)
    assert again.code == "order_failed"
    assert await provider.status(last_order) is PaymentStatus.REFUNDED

    async def ledger() -> dict[str, Any]:
        rows = await pool.fetch("SELECT id, status FROM orders WHERE sale_id = $1", sale.id)
        inv = await pool.fetchrow(
            "SELECT held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
        )
        return {
            "orders": {str(r["id"]): r["status"] for r in rows},
            "held": inv["held"],
            "sold": inv["sold"],
        }

    expected = {
        "orders": {orders[0]: "confirmed", orders[1]: "confirmed", last_order: "failed"},
        "held": 0,
        "sold": 2,
    }
    assert await ledger() == expected
    assert await inventory(redis, room, sale) == {"avail": 0, "held": 0, "sold": 2}
    # the persister arriving late with the three hold entries changes nothing
    persister = Persister(redis, pool, services.sales, purchases, consumer="late")
    assert await persister.drain(sale) == 3
    assert await ledger() == expected
    assert (await purchases.stock.reconcile(sale)).ok


# -- a payment that does not finish ----------------------------------------------------------


class GatedProvider(CountingProvider):
    """The simulated provider, whose charge answers only once `gate` is open (it charges
    first: the money moves, then the answer waits)."""

    def __init__(self, inner: SimulatedProvider) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        charge = await super().charge(order_id, amount_cents, currency, token)
        self.waiting.set()
        await self.gate.wait()
        return charge


async def test_a_cancelled_payment_leaves_the_hold_payable_and_charges_once(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
    make_sale: MakeSale,
    admit: Admit,
) -> None:
    """The shopper goes away while the provider is answering (the request is cancelled): the
    hold does not stay `paying` until it expires, the breaker is not left waiting for a trial,
    cancelling meanwhile is refused rather than answered with a hold that is still paying,
    and the retry confirms the one charge that was made."""
    provider = GatedProvider(
        SimulatedProvider(redis, f"{settings.redis_prefix}:{secrets.token_hex(4)}")
    )
    payments = GuardedProvider(provider, CircuitBreaker(threshold=1), timeout_s=30)
    services = Services.build(
        settings, redis, raw_redis, pool, room=room, sales=sales, payments=payments
    )
    purchases = services.purchases
    sale = await make_sale(stock=5, price_cents=800)
    [shopper] = await admit(sale, 1)
    order_id = (await purchases.hold(sale, shopper, quantity=1)).order["id"]
    hold_key = room.keys(sale.id).hold(order_id)
    expires = await redis.hget(hold_key, "expires_ms")
    paying = asyncio.ensure_future(purchases.pay(sale, shopper.visitor, order_id, "tok_approve"))
    await provider.waiting.wait()
    assert (await purchases.order(sale, shopper.visitor, order_id))["status"] == "paying"
    refused = await refusal_of(purchases.cancel(sale, shopper.visitor, order_id))
    assert (refused.kind, refused.code, refused.retry_after) == (
        Refusal.CONFLICT,
        "payment_in_progress",
        2,
    )
    paying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await paying
    fields = await redis.hgetall(hold_key)
    assert (fields["status"], fields["pay_attempted"]) == ("held", "1")
    assert fields["expires_ms"] == expires  # cancelling a payment does not lengthen a hold
    assert payments.breaker.state == "closed"  # threshold 1: a cancellation is no failure
    assert await provider.inner.status(order_id) is PaymentStatus.PAID  # the money moved
    provider.gate.set()
    paid = await purchases.pay(sale, shopper.visitor, order_id, "tok_approve")
    assert paid["status"] == "confirmed"
    assert provider.calls["charge"] == 2  # asked twice, charged once: the first outcome
    assert await inventory(redis, room, sale) == {"avail": 4, "held": 0, "sold": 1}


async def refusal_of(call: Awaitable[Any]) -> PurchaseRefused:
    try:
        result = await call
    except PurchaseRefused as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {result!r}")


async def test_a_payment_the_database_cannot_confirm_is_finished_by_the_retry(
    settings: Settings,
    services: Services,
    make_sale: MakeSale,
    admit: Admit,
    redis: Redis,
    room: WaitingRoom,
) -> None:
    """The charge goes through but PostgreSQL cannot be reached to confirm it (here a pool that
    is closed: asyncpg refuses every query): the shopper is told to ask again shortly
    (`confirmation_pending`, a 503 with Retry-After), the hold goes back to `held` instead of
    staying `paying` until it expires, and the retry, with the database back, confirms it on
    the first charge."""
    purchases = services.purchases
    sale = await make_sale(stock=5, price_cents=700)
    [shopper] = await admit(sale, 1)
    order_id = (await purchases.hold(sale, shopper, quantity=1)).order["id"]
    working = purchases.pool
    broken = await connect_pool(settings, min_size=1, max_size=1)
    await broken.close()
    purchases.pool = broken
    try:
        pending = await refusal_of(purchases.pay(sale, shopper.visitor, order_id, "tok_approve"))
        assert (pending.kind, pending.code) == (Refusal.UNAVAILABLE, "confirmation_pending")
        assert pending.retry_after
    finally:
        purchases.pool = working
    fields = await redis.hgetall(room.keys(sale.id).hold(order_id))
    assert (fields["status"], fields["pay_attempted"]) == ("held", "1")
    provider = purchases.payments.provider
    assert isinstance(provider, SimulatedProvider)
    assert await provider.status(order_id) is PaymentStatus.PAID
    paid = await purchases.pay(sale, shopper.visitor, order_id, "tok_approve")
    assert (paid["status"], paid["id"]) == ("confirmed", order_id)
    assert await inventory(redis, room, sale) == {"avail": 4, "held": 0, "sold": 1}
