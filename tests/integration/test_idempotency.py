"""An Idempotency-Key is bound to the request it was first sent with, as Stripe binds it: the
same key with the same request gets the same answer (however its JSON is spelled), the same
key with another request is refused with 422 `idempotency_key_reused` and changes nothing,
also once the admission has ended and once Redis has forgotten the key (PostgreSQL keeps the
fingerprint beside it). Real Redis, real PostgreSQL, through the core and over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.purchase import (
    Held,
    PurchaseRefused,
    Purchases,
    Refusal,
    idempotency_digest,
    request_fingerprint,
)
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims, Signer

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]
VENUE = {
    "sections": [{"name": "A", "rows": [{"name": "1", "seats": 6}, {"name": "2", "seats": 6}]}]
}


async def state(redis: Redis, purchases: Purchases, sale: Sale) -> tuple[Any, ...]:
    """Everything a hold changes in Redis."""
    keys = purchases.keys(sale.id)
    return (
        await redis.hgetall(keys.inventory),
        await redis.xlen(keys.orders_stream),
        await redis.zcard(keys.holds),
        await redis.get(keys.seats),
    )


async def refusal(call: Awaitable[Any]) -> PurchaseRefused:
    try:
        result = await call
    except PurchaseRefused as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {result!r}")


def test_the_fingerprint_is_the_request_as_parsed() -> None:
    base = request_fingerprint("s", "v", 2, [3, 1])
    assert base == request_fingerprint("s", "v", 2, [1, 3])  # seats in any order
    assert base != request_fingerprint("s", "v", 2, [1, 4])
    assert base != request_fingerprint("s", "v", 2, None)  # named seats are not a party
    assert base != request_fingerprint("s", "w", 2, [1, 3])
    assert base != request_fingerprint("t", "v", 2, [1, 3])
    assert request_fingerprint("s", "v", 1, None) != request_fingerprint("s", "v", 2, None)


async def test_same_key_same_request_same_hold_other_request_refused(
    make_sale: MakeSale, admit: Admit, purchases: Purchases, redis: Redis
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=4)
    (shopper,) = await admit(sale, 1)
    first = await purchases.hold(sale, shopper, quantity=2, idempotency_key="k")
    assert first.created
    before = await state(redis, purchases, sale)
    again = await purchases.hold(sale, shopper, quantity=2, idempotency_key="k")
    assert (again.created, again.order) == (False, first.order)
    for other in ({"quantity": 1}, {"quantity": 3}):
        refused = await refusal(purchases.hold(sale, shopper, idempotency_key="k", **other))
        assert (refused.kind, refused.code, refused.extra["field"]) == (
            Refusal.INVALID,
            "idempotency_key_reused",
            "Idempotency-Key",
        )
    assert await state(redis, purchases, sale) == before  # the refusals changed nothing
    # the key is the shopper's own: another shopper's same key is another request
    (other_shopper,) = await admit(sale, 1)
    theirs = await purchases.hold(sale, other_shopper, quantity=1, idempotency_key="k")
    assert theirs.created


async def test_one_key_raced_with_two_requests_makes_one_hold(
    make_sale: MakeSale, admit: Admit, purchases: Purchases, redis: Redis
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=4)
    (shopper,) = await admit(sale, 1)

    async def attempt(quantity: int) -> Held | str:
        try:
            return await purchases.hold(sale, shopper, quantity=quantity, idempotency_key="race")
        except PurchaseRefused as exc:
            return exc.code

    results = await asyncio.gather(*(attempt(1 + n % 2) for n in range(20)))
    held = [r for r in results if isinstance(r, Held)]
    assert sum(h.created for h in held) == 1
    winner = next(h for h in held if h.created).order
    assert {h.order["id"] for h in held} == {winner["id"]}
    # every request like the winner's got it back; every other one was refused
    assert len(held) == 10 and all(h.order["quantity"] == winner["quantity"] for h in held)
    assert results.count("idempotency_key_reused") == 10
    inventory = await redis.hgetall(purchases.keys(sale.id).inventory)
    assert int(inventory["held"]) == winner["quantity"]


async def test_named_seats_match_in_any_spelling_over_http(
    client: httpx.AsyncClient, make_sale: MakeSale, admit: Admit, signer: Signer
) -> None:
    sale = await make_sale(seat_map=VENUE, per_shopper_limit=4)
    (shopper,) = await admit(sale, 1)
    url = f"/api/sales/{sale.id}/holds"
    headers = {"Authorization": f"Bearer {signer.sign(shopper)}", "Idempotency-Key": "seats-1"}
    first = await client.post(url, json={"seats": [7, 1]}, headers=headers)
    assert first.status_code == 201, first.text
    # the same seats, named by section/row/seat, in another order, with the quantity spelled
    same = {
        "quantity": 2,
        "seats": [
            {"section": "A", "row": "1", "seat": "2"},
            {"section": "A", "row": "2", "seat": "2"},
        ],
    }
    again = await client.post(url, json=same, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    for other in ({"seats": [1, 8]}, {"quantity": 2}, {}):
        refused = await client.post(url, json=other, headers=headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == {
            "code": "idempotency_key_reused",
            "message": refused.json()["error"]["message"],
            "field": "Idempotency-Key",
        }
        assert "different request" in refused.json()["error"]["message"]


async def test_after_the_admission_ended_and_after_redis_forgot_the_key(
    client: httpx.AsyncClient,
    services: Services,
    make_sale: MakeSale,
    admit: Admit,
    signer: Signer,
    redis: Redis,
    pool: asyncpg.Pool,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=4)
    (shopper,) = await admit(sale, 1)
    url = f"/api/sales/{sale.id}/holds"
    live = {"Authorization": f"Bearer {signer.sign(shopper)}", "Idempotency-Key": "late-1"}
    first = await client.post(url, json={"quantity": 2}, headers=live)
    assert first.status_code == 201, first.text
    ended = signer.sign(replace(shopper, exp=time.time() - 5))
    late = {"Authorization": f"Bearer {ended}", "Idempotency-Key": "late-1"}

    async def check() -> None:
        replay = await client.post(url, json={"quantity": 2}, headers=late)
        assert replay.status_code == 200, replay.text
        assert replay.json() == first.json()
        other = await client.post(url, json={"quantity": 3}, headers=late)
        assert other.status_code == 422, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        # an empty body asks for one unit: another request too
        empty = await client.post(url, headers=late)
        assert empty.json()["error"]["code"] == "idempotency_key_reused"

    await check()
    # the persister records the fingerprint beside the key in PostgreSQL
    persister = Persister(redis, pool, services.sales, services.purchases, consumer="idem")
    assert await persister.drain(sale) == 1
    row = await pool.fetchrow(
        "SELECT idempotency_key, idempotency_fingerprint FROM orders WHERE id = $1",
        first.json()["id"],
    )
    assert (row["idempotency_key"], row["idempotency_fingerprint"]) == (
        "late-1",
        request_fingerprint(sale.id, shopper.visitor, 2, None),
    )
    # Redis's record is gone (it expires; a failover can lose it): PostgreSQL answers
    keys = services.purchases.keys(sale.id)
    assert await redis.delete(keys.idempotency(shopper.visitor, idempotency_digest("late-1")))
    await check()
    # a key PostgreSQL never saw still buys nothing with an ended admission
    unknown = await client.post(
        url, json={"quantity": 2}, headers={**late, "Idempotency-Key": "late-2"}
    )
    assert unknown.status_code == 410, unknown.text


async def test_a_record_from_before_fingerprints_matches_any_request(
    make_sale: MakeSale, admit: Admit, purchases: Purchases, redis: Redis
) -> None:
    """A key stored by the previous version (a bare order id, no fingerprint) still replays its
    hold during a rolling upgrade, rather than refusing every retry."""
    sale = await make_sale(stock=10, per_shopper_limit=4)
    (shopper,) = await admit(sale, 1)
    first = await purchases.hold(sale, shopper, quantity=2, idempotency_key="old")
    key = purchases.keys(sale.id).idempotency(shopper.visitor, idempotency_digest("old"))
    await redis.set(key, first.order["id"])
    again = await purchases.hold(sale, shopper, quantity=1, idempotency_key="old")
    assert (again.created, again.order["id"]) == (False, first.order["id"])
    replayed = await purchases.replayed(sale, shopper.visitor, "old", quantity=3)
    assert replayed is not None and replayed["id"] == first.order["id"]
