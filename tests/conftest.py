"""Shared fixtures: real Redis and real PostgreSQL (from REDIS_URL / DATABASE_URL), and the kind
of each test (its folder: unit, integration, system, browser, ...) as a marker.

REDIS_URL may name one node of a Redis Cluster: the clients are then cluster clients (the
server is asked, as FLASHSALE_REDIS_CLUSTER=auto does), and the same tests run on a cluster;
`make test` runs the room, purchase, persister, admitter and demo tests a second time so.

Each test session works in its own PostgreSQL schema and under its own Redis key prefix, and
removes both at the end, so tests never disturb other data on the same servers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from flashsale.config import Settings
from flashsale.waiting_room.db import connect_pool, migrate
from flashsale.waiting_room.purchase import Purchases
from flashsale.waiting_room.redis_client import RedisClient, open_redis, remove_matching
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.status import State
from flashsale.waiting_room.tokens import ADMISSION, Claims, Signer
from tests.support import ADMIN_TOKEN, Admit, Clock, app_for, sale_body

KINDS = ("unit", "integration", "system", "browser", "kubernetes", "image", "deploy", "cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind, the folder it lives in (`pytest -m unit`)."""
    for item in items:
        parts = item.path.relative_to(Path(__file__).parent).parts
        if len(parts) > 1 and parts[0] in KINDS:
            item.add_marker(parts[0])


@pytest.fixture(scope="session")
def settings() -> Settings:
    run = f"{os.getpid()}{secrets.token_hex(2)}"
    return Settings.from_env(
        redis_prefix=f"fstest{run}",
        database_schema=f"fstest_{run}",
        admin_token=ADMIN_TOKEN,
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
        status_cache_ms=0,
        join_limit_per_visitor=1000,
        join_limit_per_address=1_000_000,
        join_buckets=64,
    )


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[None]:
    await migrate(settings)
    yield
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pool(settings: Settings, database: None) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(settings, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[RedisClient]:
    client = await open_redis(settings)
    yield client
    await remove_matching(client, f"{settings.redis_prefix}:*")
    await client.aclose()


@pytest.fixture(scope="session")
async def raw_redis(settings: Settings) -> AsyncIterator[RedisClient]:
    """A client without response decoding, for binary values (the seat bitmap)."""
    client = await open_redis(settings, decode=False)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return Signer(settings.signing_keys())


@pytest.fixture
def room(redis: RedisClient, settings: Settings, signer: Signer, clock: Clock) -> WaitingRoom:
    return WaitingRoom(redis, settings, signer, clock=clock)


@pytest.fixture
def sales(pool: asyncpg.Pool, room: WaitingRoom, clock: Clock) -> Sales:
    return Sales(pool, room, clock=clock.now)


@pytest.fixture
def make_sale(sales: Sales) -> Callable[..., Any]:
    async def make(**overrides: Any) -> Sale:
        body = sale_body(**overrides)
        if overrides.get("seat_map") is not None and "stock" not in overrides:
            del body["stock"]  # a seated sale's stock is its seat count
        return await sales.create(body)

    return make


@pytest.fixture
def services(
    settings: Settings,
    redis: RedisClient,
    raw_redis: RedisClient,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
) -> Services:
    return Services.build(settings, redis, raw_redis, pool, room=room, sales=sales)


@pytest.fixture
def purchases(services: Services) -> Purchases:
    return services.purchases


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the real app (real Redis, real PostgreSQL) in process."""
    app = app_for(services)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def admit(room: WaitingRoom, clock: Clock, signer: Signer) -> Admit:
    """`await admit(sale, shoppers)`: admitted shoppers, as the admission claims their polls
    hand out, in the order given. `shoppers` is a number of new shoppers, who join after the
    opening (the room clock is moved past it first), or a list of visitor ids, who join at the
    room's current time: before the opening, into the pre-queue, drawn at the opening (then
    each polls once, as presence from before the opening is too old).

    Admission runs batch after batch until all are in, so the sale's batch_size and max_active
    must allow them. At most `chunk` calls run at once, like the API's concurrent requests;
    the crowd reads the room through a cached view of its own, as an API process does."""

    def crowd() -> WaitingRoom:
        return WaitingRoom(
            room.redis, replace(room.settings, status_cache_ms=60_000), room.signer, clock=clock
        )

    async def gathered(calls: list[Awaitable[Any]], chunk: int) -> list[Any]:
        results: list[Any] = []
        for first in range(0, len(calls), chunk):
            results += await asyncio.gather(*calls[first : first + chunk])
        return results

    async def admit(
        sale: Sale, shoppers: int | list[str], *, prefix: str | None = None, chunk: int = 50
    ) -> list[Claims]:
        opens = sale.opens_at.timestamp()
        if isinstance(shoppers, int):
            prefix = prefix or f"shopper-{secrets.token_hex(3)}"
            visitors = [f"{prefix}-{n:05d}" for n in range(shoppers)]
            if clock() < opens:
                clock.advance(opens - clock() + 1)
        else:
            visitors = shoppers
        joining = crowd()
        joined = await gathered([joining.join(sale.id, v, "198.51.100.1") for v in visitors], chunk)
        bad = [(v, j.outcome) for v, j in zip(visitors, joined, strict=True) if j.outcome != "ok"]
        assert not bad, f"joins refused: {bad[:5]}"
        tickets: list[Claims] = [j.claims for j in joined]
        if clock() < opens:  # they joined the pre-queue: open, and let each show presence
            clock.advance(opens - clock() + 1)
            await gathered([crowd().poll(sale.id, t) for t in tickets], chunk)
        for _ in range(2 * len(visitors) // sale.batch_size + 10_000):
            result = await room.admit_once(sale.id)
            if result.outcome == "opened" or (result.outcome == "ok" and result.admitted):
                continue
            if result.outcome == "wait":
                clock.advance(sale.batch_interval_ms / 1000)
                continue
            assert result.outcome in ("ok", "idle", "full"), f"admission stopped: {result}"
            break
        active = dict(await room.redis.zrange(room.keys(sale.id).active, 0, -1, withscores=True))
        missing = [t.visitor for t in tickets if str(t.index) not in active]
        assert not missing, f"{len(missing)} not admitted (is max_active too small?): {missing[:3]}"
        # the admission each shopper's poll hands out
        told = crowd()
        claims: list[Claims] = []
        for poll in await gathered([told.poll(sale.id, t) for t in tickets], chunk):
            assert poll.status.state is State.ADMITTED and poll.admission_token, poll.status
            claims.append(
                signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
            )
        assert [c.index for c in claims] == [t.index for t in tickets]
        return claims

    return admit
