"""The pre-queue draw through the real room: at the opening the pre-queue is frozen once, its
order is a uniform-looking permutation independent of join order, and later joiners stand
behind it; admission walks that drawn order.

The statistical tests are sized so that a correct draw fails them with probability < 1e-4.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from flashsale.waiting_room.room import AdmitResult, JoinResult, WaitingRoom, index_at, place_of
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.status import State
from flashsale.waiting_room.tokens import Claims

if TYPE_CHECKING:
    from conftest import Clock

MakeSale = Callable[..., Awaitable[Sale]]
ADDRESS = "198.51.100.7"
ALPHA = 1e-4  # accepted probability of a false failure per statistical check


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def normal_quantile(p: float) -> float:
    """z with P(Z > z) = p, by bisection on erfc."""
    low, high = 0.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if math.erfc(mid / math.sqrt(2)) / 2 > p:
            low = mid
        else:
            high = mid
    return low


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): 1 - regularised lower incomplete gamma (series)."""
    a, y = df / 2, x / 2
    term = total = 1.0 / a
    n = 0
    while term > total * 1e-16:
        n += 1
        term *= y / (a + n)
        total += term
    return 1.0 - math.exp(a * math.log(y) - y - math.lgamma(a)) * total


async def join_many(room: WaitingRoom, sale_id: str, n: int, prefix: str) -> list[Claims]:
    results = await asyncio.gather(
        *(room.join(sale_id, f"{prefix}-{k}", ADDRESS) for k in range(n))
    )
    assert all(r.outcome == "ok" and r.claims is not None for r in results)
    return sorted((r.claims for r in results if r.claims), key=lambda c: c.index)


def test_statistics_helpers() -> None:
    assert abs(normal_quantile(0.025) - 1.959964) < 1e-5
    assert abs(chi2_sf(27.877, 9) - 0.001) < 1e-5  # tabulated 0.999 quantile of chi2(9)
    assert abs(chi2_sf(16.919, 9) - 0.05) < 1e-4


async def test_prequeue_draw_is_a_permutation_independent_of_join_order(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock
) -> None:
    n = 400
    sale = await make_sale()
    tickets = await join_many(room, sale.id, n, "early")
    assert [t.index for t in tickets] == list(range(n))
    clock.advance(3601)
    assert (await room.admit_once(sale.id)).outcome == "opened"
    view = await room.view(sale.id, fresh=True)
    assert (view.opened, view.prequeue, view.seq, view.frontier) == (True, n, n, 0)

    positions = [place_of(view, j) for j in range(n)]
    assert sorted(positions) == list(range(n))
    assert [index_at(view, p) for p in positions] == list(range(n))
    # what waiters are told agrees with the draw
    for ticket in tickets[:50]:
        status = (await room.poll(sale.id, ticket)).status
        assert status.state is State.WAITING
        assert status.position == positions[ticket.index] + 1

    # Spearman: ranks are the join index and the position themselves. Under independence rho
    # is ~ N(0, 1/(n-1)), so |rho| < z(ALPHA/2)/sqrt(n-1) (0.195 for n = 400) fails a fair
    # draw with probability ALPHA; an unshuffled queue has rho = 1.
    d2 = sum((p - j) ** 2 for j, p in enumerate(positions))
    rho = 1 - 6 * d2 / (n * (n * n - 1))
    bound = normal_quantile(ALPHA / 2) / math.sqrt(n - 1)
    assert abs(rho) < bound, (rho, bound)

    # Chi-square on join-order quartile x position quartile (expected 25 per cell, df = 9)
    table = [[0] * 4 for _ in range(4)]
    for j, p in enumerate(positions):
        table[j * 4 // n][p * 4 // n] += 1
    expected = n / 16
    chi2 = sum((cell - expected) ** 2 / expected for row in table for cell in row)
    assert chi2_sf(chi2, 9) > ALPHA, (chi2, table)


async def test_first_and_last_joiners_land_anywhere_across_sales(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock
) -> None:
    sales, size = 20, 30
    clock.freeze()
    created = [
        await make_sale(opens_at=iso(clock() + 60), closes_at=iso(clock() + 3600))
        for _ in range(sales)
    ]
    for sale in created:
        await join_many(room, sale.id, size, "pre")
    clock.advance(60)
    firsts, lasts = [], []
    for k, sale in enumerate(created):
        if k % 2:  # half open through the admitter, half through a join
            assert (await room.admit_once(sale.id)).outcome == "opened"
        else:
            opener = await room.join(sale.id, "opener", ADDRESS)
            assert opener.claims is not None and opener.claims.index == size
        view = await room.view(sale.id, fresh=True)
        assert view.prequeue == size
        if k % 2 == 0:
            assert place_of(view, size) == size  # the opener stands right behind the pre-queue
        firsts.append(place_of(view, 0))
        lasts.append(place_of(view, size - 1))
    # positions of a given joiner are uniform on 0..size-1 across sales
    mean, sd = (size - 1) / 2, math.sqrt((size * size - 1) / 12 / sales)
    z = normal_quantile(ALPHA / 4)  # two joiners, two-sided
    for drawn in (firsts, lasts):
        assert abs(sum(drawn) / sales - mean) < z * sd, drawn
        assert len(set(drawn)) >= 6, drawn  # P(<= 5 distinct values of 20 draws) < 1e-10
    assert firsts != [0] * sales and lasts != [size - 1] * sales


async def test_later_joiners_stand_behind_the_prequeue_and_admission_walks_the_draw(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock, redis: Redis
) -> None:
    pre, post, batch = 50, 20, 10
    sale = await make_sale(
        admission={
            "batch_size": batch,
            "batch_interval_ms": 50,
            "max_active": 1000,
            "admission_ttl_seconds": 600,
            "abandon_after_seconds": 60,
        }
    )
    early = await join_many(room, sale.id, pre, "early")
    clock.advance(3601)
    for ticket in early:  # still here at the opening (the join's heartbeat is an hour old)
        assert (await room.poll(sale.id, ticket)).status.state is State.NOT_OPEN
    late = [await room.join(sale.id, f"late-{k}", ADDRESS) for k in range(post)]
    assert [r.claims.index for r in late if r.claims] == list(range(pre, pre + post))
    view = await room.view(sale.id, fresh=True)
    assert (view.prequeue, view.seq) == (pre, pre + post)
    assert sorted(place_of(view, t.index) for t in early) == list(range(pre))
    assert [place_of(view, j) for j in range(pre, pre + post)] == list(range(pre, pre + post))
    for result in late[:3]:
        assert result.claims is not None
        status = (await room.poll(sale.id, result.claims)).status
        assert status.position == result.claims.index + 1 and status.ahead == result.claims.index

    active = room.keys(sale.id).active
    seen: set[int] = set()
    for start in range(0, pre + post, batch):
        result = await room.admit_once(sale.id)
        assert (result.outcome, result.admitted, result.skipped) == ("ok", batch, 0)
        members = {int(m) for m in await redis.zrange(active, 0, -1)}
        assert members - seen == {index_at(view, p) for p in range(start, start + batch)}
        seen = members
        clock.advance(0.051)
    assert seen == set(range(pre + post))


async def test_opening_freezes_the_prequeue_exactly_once_under_a_race(
    make_sale: MakeSale, room: WaitingRoom, clock: Clock
) -> None:
    rounds, pre, post = 6, 40, 60
    clock.freeze()
    created = [
        await make_sale(opens_at=iso(clock() + 60), closes_at=iso(clock() + 3600))
        for _ in range(rounds)
    ]
    early = {sale.id: await join_many(room, sale.id, pre, "early") for sale in created}
    clock.advance(60)
    for sale in created:
        calls: list[Awaitable[JoinResult | AdmitResult]] = [
            room.join(sale.id, f"late-{k}", ADDRESS) for k in range(post)
        ]
        calls += [room.admit_once(sale.id) for _ in range(15)]
        calls += [room.join(sale.id, t.visitor, ADDRESS) for t in early[sale.id][:10]]
        random.shuffle(calls)
        results = await asyncio.gather(*calls)
        joins = [r for r in results if isinstance(r, JoinResult)]
        admits = [r for r in results if isinstance(r, AdmitResult)]
        assert sum(r.outcome == "opened" for r in admits) <= 1
        fresh = sorted(r.claims.index for r in joins if r.claims and not r.existing)
        assert fresh == list(range(pre, pre + post))  # no index handed out twice or skipped
        rejoined = {r.claims.visitor: r.claims.index for r in joins if r.claims and r.existing}
        assert rejoined == {t.visitor: t.index for t in early[sale.id][:10]}
        view = await room.view(sale.id, fresh=True)
        assert (view.opened, view.prequeue, view.pre, view.seq) == (True, pre, pre, pre + post)
        assert view.admitted_total + view.skipped_total == view.frontier
