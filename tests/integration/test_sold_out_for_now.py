"""While every unit sits in unpaid holds, the sale is only sold out "for now": admitted
shoppers stay admitted, newcomers may still join, and a refusal for the shopper's own limit
gives its units back."""

from __future__ import annotations

from typing import Any

import pytest

from flashsale.waiting_room import ledger
from flashsale.waiting_room.purchase import PurchaseRefused, Purchases
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.status import State


def _admission(n: int) -> dict[str, Any]:
    return {
        "batch_size": n,
        "batch_interval_ms": 50,
        "max_active": n,
        "admission_ttl_seconds": 600,
        "abandon_after_seconds": 60,
    }


async def test_admitted_shoppers_stay_admitted_while_units_are_held(
    make_sale: Any, admit: Any, room: WaitingRoom, purchases: Purchases
) -> None:
    sale = await make_sale(stock=1, per_shopper_limit=1, admission=_admission(5))
    first, second = await admit(sale, ["holder-0001", "second-0001"])
    await purchases.hold(sale, first, quantity=1)
    poll = await room.poll(sale.id, second)
    assert poll.status.state is State.ADMITTED
    assert poll.admission_token is not None
    assert "baskets" in poll.status.message
    # newcomers are not turned away while the unit may come back
    joined = await room.join(sale.id, "late-000001", "192.0.2.1")
    assert joined.outcome == "ok"


async def test_sold_for_good_turns_newcomers_away(
    make_sale: Any, admit: Any, room: WaitingRoom, purchases: Purchases
) -> None:
    sale = await make_sale(stock=1, per_shopper_limit=1, admission=_admission(5))
    (first,) = await admit(sale, ["buyer-00001"])
    held = await purchases.hold(sale, first, quantity=1)
    await purchases.pay(sale, first.visitor, held.order["id"], "tok_approve")
    assert (await room.join(sale.id, "late-000002", "192.0.2.1")).outcome == "sold_out"


async def test_a_refusal_for_the_shoppers_limit_returns_the_units(
    make_sale: Any, admit: Any, purchases: Purchases, pool: Any, redis: Any
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=2, admission=_admission(5))
    (claims,) = await admit(sale, ["limited-001"])
    held = await purchases.hold(sale, claims, quantity=2)
    keys = purchases.keys(sale.id)
    # PostgreSQL already counts two other units for this shopper (Redis lost them)
    await pool.execute(
        "INSERT INTO shopper_totals (sale_id, visitor, units, limit_units) VALUES ($1, $2, 2, 2)",
        sale.id,
        claims.visitor,
    )
    with pytest.raises(PurchaseRefused) as refused:
        await purchases.pay(sale, claims.visitor, held.order["id"], "tok_approve")
    assert refused.value.code == "order_failed"
    order = await purchases.order(sale, claims.visitor, held.order["id"])
    assert order["status"] == "failed"
    assert order["reason"] == ledger.REFUSALS["shopper_within_limit"]
    # the stock was real: it is back on sale
    assert int(await redis.hget(keys.inventory, "avail")) == 10
