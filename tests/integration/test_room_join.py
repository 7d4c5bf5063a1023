"""Joining the waiting room: one place per visitor, however often and however concurrently they
join; refused joins (closed, sold out) take no place; existing visitors keep theirs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales

if TYPE_CHECKING:
    from conftest import Clock

MakeSale = Callable[..., Awaitable[Sale]]
ADDRESS = "198.51.100.7"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def test_same_visitor_joining_sequentially_keeps_one_place(
    make_sale: MakeSale, room: WaitingRoom
) -> None:
    sale = await make_sale()
    first = await room.join(sale.id, "alice", ADDRESS)
    assert first.outcome == "ok"
    assert first.existing is False
    assert first.claims is not None and first.claims.index == 0
    for n in range(5):
        again = await room.join(sale.id, "alice", f"203.0.113.{n}")  # address does not matter
        assert again.outcome == "ok"
        assert again.existing is True
        assert again.claims is not None and again.claims.index == 0
    bob = await room.join(sale.id, "bob", ADDRESS)
    assert bob.existing is False
    assert bob.claims is not None and bob.claims.index == 1
    view = await room.view(sale.id, fresh=True)
    assert (view.opened, view.pre) == (False, 2)


async def test_same_visitor_joining_concurrently_keeps_one_place(
    make_sale: MakeSale, room: WaitingRoom
) -> None:
    sale = await make_sale()
    results = await asyncio.gather(*(room.join(sale.id, "carol", ADDRESS) for _ in range(40)))
    assert {r.outcome for r in results} == {"ok"}
    assert {r.claims.index for r in results if r.claims} == {0}
    assert sum(not r.existing for r in results) == 1
    assert (await room.view(sale.id, fresh=True)).pre == 1


async def test_many_visitors_each_joining_repeatedly_get_distinct_places(
    make_sale: MakeSale, room: WaitingRoom
) -> None:
    sale = await make_sale()
    visitors = [f"visitor-{k:03d}" for k in range(200)]
    calls = [v for v in visitors for _ in range(3)]
    random.shuffle(calls)
    results = await asyncio.gather(*(room.join(sale.id, v, ADDRESS) for v in calls))
    by_visitor: dict[str, set[int]] = {}
    fresh: dict[str, int] = {}
    for visitor, result in zip(calls, results, strict=True):
        assert result.outcome == "ok"
        assert result.claims is not None and result.claims.visitor == visitor
        by_visitor.setdefault(visitor, set()).add(result.claims.index)
        fresh[visitor] = fresh.get(visitor, 0) + (not result.existing)
    assert all(len(indices) == 1 for indices in by_visitor.values())
    assert set(fresh.values()) == {1}  # exactly one of each visitor's three joins was new
    assert sorted(i for s in by_visitor.values() for i in s) == list(range(200))
    assert (await room.view(sale.id, fresh=True)).pre == 200


async def test_joins_after_the_opening_are_sequential_and_idempotent(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock
) -> None:
    clock.freeze()
    sale = await make_sale(opens_at=iso(clock() - 60), closes_at=iso(clock() + 3600))
    indices = [(await room.join(sale.id, f"late-{k}", ADDRESS)).claims.index for k in range(10)]
    assert indices == list(range(10))  # the first join opened an empty pre-queue (P = 0)
    again = await asyncio.gather(*(room.join(sale.id, "late-4", ADDRESS) for _ in range(10)))
    assert {(r.outcome, r.existing, r.claims.index) for r in again if r.claims} == {("ok", True, 4)}
    view = await room.view(sale.id, fresh=True)
    assert (view.opened, view.prequeue, view.seq) == (True, 0, 10)


async def test_joining_after_the_close_is_refused(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, sales: Sales
) -> None:
    clock.freeze()
    # closed by time: closes_at has passed
    timed = await make_sale(opens_at=iso(clock() - 60), closes_at=iso(clock() + 600))
    assert (await room.join(timed.id, "early", ADDRESS)).claims.index == 0
    clock.advance(601)
    refused = await room.join(timed.id, "too-late", ADDRESS)
    assert refused.outcome == "closed"
    assert refused.ticket is None and refused.claims is None
    assert (await room.view(timed.id, fresh=True)).seq == 1  # no place was taken

    # closed by an admin before its time
    closed = await make_sale()
    assert (await room.join(closed.id, "early", ADDRESS)).outcome == "ok"
    await sales.close(closed.id)
    refused = await room.join(closed.id, "too-late", ADDRESS)
    assert (refused.outcome, refused.claims) == ("closed", None)
    assert (await room.view(closed.id, fresh=True)).pre == 1


async def test_sold_out_refuses_newcomers_but_keeps_existing_places(
    make_sale: MakeSale, room: WaitingRoom
) -> None:
    sale = await make_sale()
    for k in range(3):
        assert (await room.join(sale.id, f"v{k}", ADDRESS)).claims.index == k
    await room.set_sold_out(sale.id)

    newcomer = await room.join(sale.id, "newcomer", ADDRESS)
    assert (newcomer.outcome, newcomer.ticket, newcomer.claims) == ("sold_out", None, None)
    back = await room.join(sale.id, "v1", ADDRESS)
    assert back.outcome == "ok" and back.existing is True
    assert back.claims is not None and back.claims.index == 1
    assert back.ticket is not None
    assert (await room.view(sale.id, fresh=True)).pre == 3

    await room.set_sold_out(sale.id, False)  # stock returned
    newcomer = await room.join(sale.id, "newcomer", ADDRESS)
    assert newcomer.outcome == "ok" and newcomer.existing is False
    assert newcomer.claims is not None and newcomer.claims.index == 3  # refusals took no index
