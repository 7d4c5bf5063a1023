"""Several admitters in separate OS processes racing on one sale: the opening is recorded once,
active shoppers never exceed max_active, every batch respects size and pacing, and exactly the
first max_active places of the drawn order are admitted.

The admitters run on the real clock (they are other processes), so this sale opens a few
seconds after the test starts instead of through the test clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.room import RoomView, WaitingRoom, index_at
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.status import State
from flashsale.waiting_room.tokens import Claims, Signer

if TYPE_CHECKING:
    from conftest import Clock

MakeSale = Callable[..., Awaitable[Sale]]

ADMITTER = """
import asyncio, json, sys, time
from flashsale.config import Settings
from flashsale.waiting_room.redis_client import open_redis
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.tokens import Signer

async def main(sale_id, stop):
    settings = Settings.from_env()
    redis = await open_redis(settings)
    room = WaitingRoom(redis, settings, Signer(settings.signing_keys()))
    outcomes, admitted, after_opening = {}, 0, 0
    # until `stop`, and in any case for 10 calls after the opening (should start-up be slow)
    while time.time() < stop or after_opening < 10:
        result = await room.admit_once(sale_id)
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        admitted += result.admitted
        after_opening += result.outcome != "not_open"
    await redis.aclose()
    print(json.dumps({"outcomes": outcomes, "admitted": admitted}))

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""

ADMITTERS = 3
WAITERS = 2000
BATCH = 37
MAX_ACTIVE = 200
INTERVAL_MS = 50  # the smallest interval a sale accepts


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def admitter_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
            "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
            "FLASHSALE_TOKEN_KEY": settings.token_key,
            "FLASHSALE_JOIN_BUCKETS": str(settings.join_buckets),
            "FLASHSALE_STATUS_CACHE_MS": str(settings.status_cache_ms),
        }
    )
    return env


async def test_concurrent_admitter_processes_never_over_admit(
    make_sale: MakeSale,
    sales: Sales,
    room: WaitingRoom,
    redis: Redis,
    settings: Settings,
    signer: Signer,
) -> None:
    sale = await make_sale(
        admission={
            "batch_size": BATCH,
            "batch_interval_ms": INTERVAL_MS,
            "max_active": MAX_ACTIVE,
            "admission_ttl_seconds": 3600,
            "abandon_after_seconds": 60,
        }
    )
    keys = room.keys(sale.id)
    # the crowd joins the pre-queue through a room that caches its view, as the API does
    crowd = WaitingRoom(redis, replace(settings, status_cache_ms=60_000), signer)
    tickets: list[Claims] = []
    for first in range(0, WAITERS, 100):
        joined = await asyncio.gather(
            *(crowd.join(sale.id, f"crowd-{k}", "198.51.100.7") for k in range(first, first + 100))
        )
        tickets += [r.claims for r in joined if r.outcome == "ok" and r.claims]
    assert sorted(t.index for t in tickets) == list(range(WAITERS))
    for first in range(0, WAITERS, 100):
        polls = await asyncio.gather(
            *(crowd.poll(sale.id, t) for t in tickets[first : first + 100])
        )
        assert {p.status.state for p in polls} == {State.NOT_OPEN}
        assert None not in {p.heartbeat for p in polls}  # presence recorded

    # now open in 1.5 s (the admitters race to record it) and let them run 1.2 s past that
    opens = time.time() + 1.5
    stop = opens + 1.2  # six batches take ~0.3 s; the rest is admitters racing a full room
    await sales.update(sale.id, {"opens_at": iso(opens)})
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ADMITTER,
            sale.id,
            str(stop),
            env=admitter_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(ADMITTERS)
    ]
    try:
        samples: list[int] = []
        while any(p.returncode is None for p in procs):
            samples.append(await redis.zcount(keys.active, int(time.time() * 1000), "+inf"))
            await asyncio.sleep(0.002)
        reports: list[dict[str, Any]] = []
        for proc in procs:
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    view = await room.view(sale.id, fresh=True)
    assert (view.opened, view.prequeue) == (True, WAITERS)
    now_ms = int(time.time() * 1000)
    assert await redis.zcount(keys.active, now_ms, "+inf") == MAX_ACTIVE
    assert await redis.zcard(keys.active) == MAX_ACTIVE
    assert await redis.bitcount(keys.admitted) == MAX_ACTIVE
    assert len(samples) >= 50
    assert max(samples) == MAX_ACTIVE, max(samples)  # never above, and the room did fill
    # every position consumed was admitted (all waiters present): frontier = admitted
    assert (view.frontier, view.admitted_total, view.skipped_total) == (MAX_ACTIVE, MAX_ACTIVE, 0)
    admitted = {int(m) for m in await redis.zrange(keys.active, 0, -1)}
    assert admitted == {index_at(view, p) for p in range(MAX_ACTIVE)}  # the first 200 drawn

    # together the admitters recorded one opening and exactly 200 admissions
    assert sum(r["outcomes"].get("opened", 0) for r in reports) == 1, reports
    assert sum(r["admitted"] for r in reports) == MAX_ACTIVE, reports

    # batches, oldest first: sizes 37 x 5 then the 15 free slots; never closer than the interval
    batches = [
        tuple(map(int, b.split(":"))) for b in reversed(await redis.lrange(keys.batches, 0, -1))
    ]
    assert [b[2] for b in batches] == [BATCH] * 5 + [MAX_ACTIVE - 5 * BATCH]
    assert [b[1] for b in batches] == [BATCH * k for k in range(1, 6)] + [MAX_ACTIVE]
    assert all(b[3] == 0 for b in batches)
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(batches)]
    assert min(gaps) >= INTERVAL_MS, gaps


async def test_admission_script_rechecks_what_the_admitter_read(
    make_sale: MakeSale,
    room: WaitingRoom,
    redis: Redis,
    settings: Settings,
    signer: Signer,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic interleavings: between an admitter reading the room and its script
    running, another admitter lets a batch in, or the stock runs out. The script must notice."""
    clock.freeze()
    sale = await make_sale(
        opens_at=iso(clock() - 60),
        closes_at=iso(clock() + 3600),
        admission={
            "batch_size": 10,
            "batch_interval_ms": 1000,
            "max_active": 100,
            "admission_ttl_seconds": 600,
            "abandon_after_seconds": 60,
        },
    )
    for k in range(40):
        assert (await room.join(sale.id, f"w-{k}", "198.51.100.7")).outcome == "ok"
    other = WaitingRoom(redis, settings, signer, clock=clock)  # a second admitter
    keys = room.keys(sale.id)
    read_view = room.view

    async def then_other_admits(sale_id: str, *, fresh: bool = False) -> RoomView:
        view = await read_view(sale_id, fresh=fresh)
        assert (await other.admit_once(sale_id)).admitted == 10
        return view

    monkeypatch.setattr(room, "view", then_other_admits)
    result = await room.admit_once(sale.id)
    assert (result.outcome, result.admitted, result.frontier) == ("stale", 0, 10)
    assert await redis.zcard(keys.active) == 10
    assert await redis.bitcount(keys.admitted) == 10

    async def then_sold_out(sale_id: str, *, fresh: bool = False) -> RoomView:
        view = await read_view(sale_id, fresh=fresh)
        await redis.hset(keys.meta, "sold_out", 1)  # the inventory hook, just too late
        return view

    clock.advance(1.01)
    monkeypatch.setattr(room, "view", then_sold_out)
    result = await room.admit_once(sale.id)
    assert (result.outcome, result.admitted) == ("sold_out", 0)
    monkeypatch.setattr(room, "view", read_view)
    assert await redis.zcard(keys.active) == 10
    assert (await room.view(sale.id, fresh=True)).frontier == 10
