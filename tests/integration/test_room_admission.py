"""Admission from an opened room: FIFO order, batch and active limits, pacing, expiry, leaving,
abandonment, sold out, and what a waiter is told while waiting.

The room's clock is frozen (`clock.freeze()`), so every batch happens at an exact instant;
Redis and PostgreSQL are real.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from flashsale.waiting_room.keys import HEARTBEAT_SLICES
from flashsale.waiting_room.room import Poll, WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.status import MAX_POLL_S, MIN_POLL_S, State
from flashsale.waiting_room.tokens import Claims

if TYPE_CHECKING:
    from conftest import Clock

MakeSale = Callable[..., Awaitable[Sale]]
ADDRESS = "198.51.100.7"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def open_sale(make_sale: MakeSale, clock: Clock, **admission: Any) -> Sale:
    """A sale that opened a minute ago (by the frozen room clock) and closes in three hours.

    The clock stops on a whole second, so whole-second steps give exact millisecond times;
    fractional steps keep a millisecond of margin against float rounding."""
    clock.freeze()
    clock.advance(math.ceil(clock()) - clock())
    settings = {
        "batch_size": 10,
        "batch_interval_ms": 1000,
        "max_active": 1000,
        "admission_ttl_seconds": 600,
        "abandon_after_seconds": 60,
    }
    settings.update(admission)
    return await make_sale(
        opens_at=iso(clock() - 60), closes_at=iso(clock() + 3 * 3600), admission=settings
    )


async def join_many(room: WaitingRoom, sale_id: str, n: int, prefix: str = "w") -> list[Claims]:
    """`n` visitors joining one after another; after the opening their index is their turn."""
    tickets = []
    for k in range(n):
        joined = await room.join(sale_id, f"{prefix}-{k:04d}", ADDRESS)
        assert joined.outcome == "ok" and joined.claims is not None
        tickets.append(joined.claims)
    return tickets


async def poll_all(room: WaitingRoom, sale_id: str, tickets: list[Claims]) -> list[Poll]:
    return list(await asyncio.gather(*(room.poll(sale_id, t) for t in tickets)))


async def active_members(redis: Redis, room: WaitingRoom, sale_id: str) -> set[int]:
    return {int(m) for m in await redis.zrange(room.keys(sale_id).active, 0, -1)}


# -- FIFO -------------------------------------------------------------------------------------


async def test_post_opening_joiners_are_admitted_in_join_order(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    sale = await open_sale(make_sale, clock, batch_size=7, batch_interval_ms=50)
    tickets = await join_many(room, sale.id, 40)
    assert [t.index for t in tickets] == list(range(40))
    keys = room.keys(sale.id)

    batches: list[list[str]] = []
    admitted: set[str] = set()
    while len(admitted) < 45:
        await poll_all(room, sale.id, tickets)  # everyone present: nobody is skipped
        result = await room.admit_once(sale.id)
        assert result.outcome == "ok"
        newly = []
        for ticket in tickets:  # in join order
            if ticket.visitor in admitted:
                continue
            if (await room.poll(sale.id, ticket)).status.state is State.ADMITTED:
                newly.append(ticket.visitor)
        admitted.update(newly)
        batches.append(newly)
        done = len(admitted)
        # exactly the first `done` join indices are admitted: bitmap and active set agree
        assert await redis.bitcount(keys.admitted) == done
        assert await redis.bitpos(keys.admitted, 0) == done
        assert await active_members(redis, room, sale.id) == set(range(done))
        assert result.frontier == done and result.skipped == 0
        if len(batches) == 1:  # latecomers queue behind everyone already in line
            tickets += await join_many(room, sale.id, 5, prefix="late")
            assert [t.index for t in tickets[40:]] == list(range(40, 45))
        clock.advance(0.051)

    names = [t.visitor for t in tickets]
    assert batches == [names[i : i + 7] for i in range(0, 45, 7)]
    assert [len(b) for b in batches] == [7, 7, 7, 7, 7, 7, 3]


# -- batch size, max active, pacing, expiry, finish and leave -------------------------------


async def test_batches_respect_size_max_active_interval_expiry_finish_and_leave(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    sale = await open_sale(
        make_sale,
        clock,
        batch_size=10,
        batch_interval_ms=1000,
        max_active=25,
        admission_ttl_seconds=30,
    )
    tickets = await join_many(room, sale.id, 60)
    active_key = room.keys(sale.id).active

    async def admit(expect_outcome: str, admitted: int, frontier: int, active: int) -> None:
        result = await room.admit_once(sale.id)
        assert (result.outcome, result.admitted, result.frontier) == (
            expect_outcome,
            admitted,
            frontier,
        )
        assert (await room.counters(sale.id)).active == active
        assert await redis.zcard(active_key) <= sale.max_active

    await admit("ok", 10, 10, 10)  # first batch: a full batch
    await admit("wait", 0, 10, 10)  # same instant: the next batch is not due
    clock.advance(0.95)
    await admit("wait", 0, 10, 10)
    clock.advance(0.06)  # 1.01 s after the first batch
    await admit("ok", 10, 20, 20)
    clock.advance(1.01)
    await admit("ok", 5, 25, 25)  # only max_active - active = 5 slots were free
    clock.advance(1.01)
    await admit("full", 0, 25, 25)  # full: nobody admitted, no place consumed
    clock.advance(5)
    await admit("full", 0, 25, 25)
    assert await active_members(redis, room, sale.id) == set(range(25))

    await room.finish(sale.id, tickets[3].index)  # frees a slot at once
    assert (await room.counters(sale.id)).active == 24
    assert not await room.is_active(sale.id, tickets[3].index)
    await admit("ok", 1, 26, 25)  # the freed slot went to the next in line, index 25
    assert await room.is_active(sale.id, 25)

    clock.advance(1.01)
    await room.leave(sale.id, tickets[7])  # an admitted shopper gives up
    assert (await room.counters(sale.id)).active == 24
    await admit("ok", 1, 27, 25)
    assert await active_members(redis, room, sale.id) == set(range(27)) - {3, 7}

    for gone in (tickets[3], tickets[7]):
        status = (await room.poll(sale.id, gone)).status
        assert status.state is State.EXPIRED
        assert status.message == "Your admission has ended."
    assert (await room.poll(sale.id, tickets[8])).status.state is State.ADMITTED

    # every admission expires after admission_ttl_seconds: the slots free up
    clock.advance(31)
    assert (await room.counters(sale.id)).active == 0
    assert await redis.zcard(active_key) == 25  # expired, not yet swept
    assert (await room.poll(sale.id, tickets[0])).status.state is State.EXPIRED
    await poll_all(room, sale.id, tickets[27:])
    await admit("ok", 10, 37, 10)  # a full batch again, capped by batch_size
    assert await redis.zcard(active_key) == 10  # the script dropped the expired admissions
    assert await active_members(redis, room, sale.id) == set(range(27, 37))
    view = await room.view(sale.id, fresh=True)
    assert (view.admitted_total, view.skipped_total) == (37, 0)


# -- abandonment and heartbeats -------------------------------------------------------------


async def test_abandoned_waiters_are_skipped_without_using_slots(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    sale = await open_sale(
        make_sale, clock, batch_size=5, batch_interval_ms=1000, abandon_after_seconds=60
    )
    tickets = await join_many(room, sale.id, 20)  # joining records presence
    away = {2, 3, 7, 15}
    returner = 11
    clock.advance(40)
    for t in tickets:
        if t.index not in away | {returner}:
            await room.poll(sale.id, t)
    clock.advance(21)  # 61 s after the join: the absent ones are past the abandonment window
    await room.poll(sale.id, tickets[returner])  # came back just in time

    expected = [([0, 1, 4, 5, 6], 2, 7), ([8, 9, 10, 11, 12], 1, 13), ([13, 14, 16, 17, 18], 1, 19)]
    done: set[int] = set()
    for members, skipped, frontier in expected:
        result = await room.admit_once(sale.id)
        assert (result.outcome, result.admitted, result.skipped, result.frontier) == (
            "ok",
            5,
            skipped,
            frontier,
        )
        done |= set(members)
        assert await active_members(redis, room, sale.id) == done
        clock.advance(1.001)
    view = await room.view(sale.id, fresh=True)
    assert (view.admitted_total, view.skipped_total, view.frontier) == (15, 4, 19)

    for j in sorted(away):
        status = (await room.poll(sale.id, tickets[j])).status
        assert status.state is State.EXPIRED
        assert status.position == j + 1 and status.ahead == 0
        assert "away" in status.message and "next person" in status.message
        assert status.poll_after_seconds is None
        assert await redis.getbit(room.keys(sale.id).admitted, j) == 0
    assert (await room.poll(sale.id, tickets[returner])).status.state is State.ADMITTED


async def test_polls_write_a_heartbeat_once_per_slice(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    sale = await open_sale(make_sale, clock, abandon_after_seconds=60)
    slice_s = 60 / HEARTBEAT_SLICES
    clock.advance(slice_s - (clock() % slice_s) + 1)  # 1 s into a fresh slice
    joined = await room.join(sale.id, "hb", ADDRESS)
    assert joined.claims is not None and joined.heartbeat is not None
    j, hb = joined.claims.index, joined.heartbeat
    key = room.keys(sale.id).heartbeat(hb)
    assert await redis.getbit(key, j) == 1

    await redis.delete(key)  # forget the presence; only a write could bring it back
    poll = await room.poll(sale.id, joined.claims, hb)  # echoes the current slice
    assert poll.heartbeat == hb
    assert await redis.exists(key) == 0  # no write
    assert poll.status.state is State.WAITING

    poll = await room.poll(sale.id, joined.claims, hb - 1)  # a stale echo writes
    assert poll.heartbeat == hb
    assert await redis.getbit(key, j) == 1
    assert 0 < await redis.pttl(key) <= int(slice_s * 1000) * (HEARTBEAT_SLICES + 2)

    await redis.delete(key)
    poll = await room.poll(sale.id, joined.claims)  # no echo (first poll) writes
    assert poll.heartbeat == hb
    assert await redis.getbit(key, j) == 1

    clock.advance(slice_s)  # next slice: the echo of the old slice writes the new one
    poll = await room.poll(sale.id, joined.claims, hb)
    assert poll.heartbeat == hb + 1
    assert await redis.getbit(room.keys(sale.id).heartbeat(hb + 1), j) == 1
    await redis.delete(room.keys(sale.id).heartbeat(hb + 1))
    await room.poll(sale.id, joined.claims, hb + 1)
    assert await redis.exists(room.keys(sale.id).heartbeat(hb + 1)) == 0


# -- sold out ----------------------------------------------------------------------------------


async def test_sold_out_stops_admission_until_cleared(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    sale = await open_sale(make_sale, clock, batch_size=10, batch_interval_ms=1000)
    tickets = await join_many(room, sale.id, 30)
    assert (await room.admit_once(sale.id)).admitted == 10

    await room.set_sold_out(sale.id)
    for poll in await poll_all(room, sale.id, tickets):  # admitted ones too
        assert poll.status.state is State.SOLD_OUT
        assert poll.admission_token is None and poll.status.poll_after_seconds is None
    for _ in range(3):
        clock.advance(1.01)
        result = await room.admit_once(sale.id)
        assert (result.outcome, result.admitted) == ("sold_out", 0)
    view = await room.view(sale.id, fresh=True)
    assert (view.frontier, view.admitted_total) == (10, 10)
    assert await active_members(redis, room, sale.id) == set(range(10))
    assert (await room.join(sale.id, "newcomer", ADDRESS)).outcome == "sold_out"

    await room.set_sold_out(sale.id, False)
    polls = await poll_all(room, sale.id, tickets)
    assert [p.status.state for p in polls] == [State.ADMITTED] * 10 + [State.WAITING] * 20
    assert all(p.admission_token for p in polls[:10])
    result = await room.admit_once(sale.id)
    assert (result.outcome, result.admitted, result.frontier) == ("ok", 10, 20)
    assert await active_members(redis, room, sale.id) == set(range(20))


# -- what a waiter is told --------------------------------------------------------------------


async def test_status_position_ahead_eta_and_poll_pacing(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock
) -> None:
    # one place per second, so the estimated wait of a waiter is exactly (ahead + 1) seconds
    sale = await open_sale(
        make_sale,
        clock,
        batch_size=1,
        batch_interval_ms=1000,
        admission_ttl_seconds=600,
        abandon_after_seconds=60,
    )
    n = 200
    tickets = await join_many(room, sale.id, n)

    async def check_waiting() -> list[Poll]:
        view = await room.view(sale.id, fresh=True)
        polls = await poll_all(room, sale.id, tickets[view.frontier :])
        for ticket, poll in zip(tickets[view.frontier :], polls, strict=True):
            s = poll.status
            assert s.state is State.WAITING
            assert s.position == ticket.index + 1  # FIFO after the opening
            assert s.ahead == s.position - 1 - view.frontier
            assert s.waiting == n - view.frontier
            assert s.eta_seconds == float(s.ahead + 1)
            assert s.poll_after_seconds is not None
            # at least a second apart; at most the 30 s cap (the stagger only shortens), and
            # well inside the abandonment window (a 3/4 window gap is always seen)
            assert MIN_POLL_S <= s.poll_after_seconds <= MAX_POLL_S, (s.ahead, s)
            assert s.poll_after_seconds <= sale.abandon_after_seconds * 3 / 4
            assert poll.admission_token is None and s.admitted_until_ms is None
        return polls

    first = await check_waiting()
    pacing = [p.status.poll_after_seconds for p in first]
    assert pacing[:2] == [MIN_POLL_S, MIN_POLL_S]  # next in line: poll every second
    assert min(pacing[-20:]) >= 0.8 * MAX_POLL_S  # 180+ s away: rare polls
    last_eta = [first[-1].status.eta_seconds]
    for batch in range(5):
        clock.advance(1)
        result = await room.admit_once(sale.id)
        assert (result.admitted, result.frontier) == (1, batch + 1)
        # polled right after the batch: the measured rate is exactly one place per second
        last_eta.append((await check_waiting())[-1].status.eta_seconds)
    assert last_eta == [200.0, 199.0, 198.0, 197.0, 196.0, 195.0]

    # terminal states: no estimate, no further polling
    await room.finish(sale.id, tickets[0].index)
    admitted, expired = await room.poll(sale.id, tickets[1]), await room.poll(sale.id, tickets[0])
    assert admitted.status.state is State.ADMITTED and admitted.admission_token
    assert expired.status.state is State.EXPIRED
    for status in (admitted.status, expired.status):
        assert status.poll_after_seconds is None and status.eta_seconds is None
    await room.set_sold_out(sale.id)
    sold_out = (await room.poll(sale.id, tickets[-1])).status
    assert (sold_out.state, sold_out.poll_after_seconds) == (State.SOLD_OUT, None)
    await room.set_sold_out(sale.id, False)
    clock.advance(3 * 3600)
    closed = (await room.poll(sale.id, tickets[-1])).status
    assert (closed.state, closed.poll_after_seconds, closed.eta_seconds) == (
        State.CLOSED,
        None,
        None,
    )
