"""Shared fixtures: real Redis and real PostgreSQL (from REDIS_URL / DATABASE_URL).

Each test session works in its own PostgreSQL schema and under its own Redis key prefix, and
removes both at the end, so tests never disturb other data on the same servers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from api.app import create_app
from api.services import Services
from flashsale.settings import Settings
from waiting_room.db import connect_pool, migrate
from waiting_room.purchase import Purchases
from waiting_room.room import WaitingRoom
from waiting_room.sale import Sale
from waiting_room.sales import Sales
from waiting_room.status import State
from waiting_room.tokens import ADMISSION, Claims, Signer

ADMIN_TOKEN = "test-admin-token"


class Clock:
    """A settable clock for the room's own notion of time (Redis and PostgreSQL stay real)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        import time

        return (time.time() if self.frozen is None else self.frozen) + self.offset

    def freeze(self) -> None:
        """Stop the clock at the current instant: from now on only `advance` moves it, so
        tests can place the room's time to the millisecond."""
        import time

        self.frozen = time.time()

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), UTC)


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
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    async for key in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture(scope="session")
async def raw_redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client without response decoding, for binary values (the seat bitmap)."""
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return Signer(settings.signing_keys())


@pytest.fixture
def room(redis: Redis, settings: Settings, signer: Signer, clock: Clock) -> WaitingRoom:
    return WaitingRoom(redis, settings, signer, clock=clock)


@pytest.fixture
def sales(pool: asyncpg.Pool, room: WaitingRoom, clock: Clock) -> Sales:
    return Sales(pool, room, clock=clock.now)


def sale_body(**overrides: Any) -> dict[str, Any]:
    """A valid sale opening in an hour, with a fresh id; override any field."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": f"t-{secrets.token_hex(6)}",
        "name": "Test sale",
        "stock": 100,
        "opens_at": (now + timedelta(hours=1)).isoformat(),
        "closes_at": (now + timedelta(hours=3)).isoformat(),
        "admission": {
            "batch_size": 10,
            "batch_interval_ms": 50,
            "max_active": 50,
            "admission_ttl_seconds": 600,
            "abandon_after_seconds": 60,
        },
    }
    body.update(overrides)
    return body


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
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    room: WaitingRoom,
    sales: Sales,
) -> Services:
    return Services.build(settings, redis, raw_redis, pool, room=room, sales=sales)


@pytest.fixture
def purchases(services: Services) -> Purchases:
    return services.purchases


def app_for(services: Services) -> Starlette:
    """The real app wired to `services` (its lifespan is not run: the services exist)."""
    app = create_app(services.settings)
    app.state.services = services
    return app


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


Admit = Callable[[Sale, list[str]], Awaitable[list[Claims]]]


@pytest.fixture
def admit(room: WaitingRoom, clock: Clock, signer: Signer) -> Admit:
    """`await admit(sale, visitors)`: join every visitor, move the room clock past the opening
    (then poll once each, as presence from before the opening is too old), run admission until
    all are in and return their admission claims, in the order given.

    Admission takes at most batch_size per batch and only while max_active allows, so bulk
    tests need a sale with both set large enough. A sale that has already opened (opens_at in
    the past) skips the presence polls, which saves time with thousands of visitors."""

    def crowd() -> WaitingRoom:
        # the crowd's own process: its view of the room is cached, as in the API
        return WaitingRoom(
            room.redis, replace(room.settings, status_cache_ms=60_000), room.signer, clock=clock
        )

    async def gather_chunked(calls: list[Awaitable[Any]]) -> list[Any]:
        # at most 50 at a time: a bounded crowd, like the API's concurrent requests
        results: list[Any] = []
        for first in range(0, len(calls), 50):
            results += await asyncio.gather(*calls[first : first + 50])
        return results

    async def admit(sale: Sale, visitors: list[str]) -> list[Claims]:
        joining = crowd()
        joined = await gather_chunked([joining.join(sale.id, v, "198.51.100.1") for v in visitors])
        bad = [(v, j.outcome) for v, j in zip(visitors, joined, strict=True) if j.outcome != "ok"]
        assert not bad, f"joins refused: {bad[:5]}"
        tickets: list[Claims] = [j.claims for j in joined]
        opens = sale.opens_at.timestamp()
        if clock() < opens:
            clock.advance(opens - clock() + 1)
            present = crowd()
            await gather_chunked([present.poll(sale.id, t) for t in tickets])
        for _ in range(10_000):
            result = await room.admit_once(sale.id)
            if result.outcome == "opened" or (result.outcome == "ok" and result.admitted):
                continue
            if result.outcome == "wait":
                clock.advance(sale.batch_interval_ms / 1000)
                continue
            break
        # the claims each shopper's poll would hand out, read in one go from the active set
        active = dict(await room.redis.zrange(room.keys(sale.id).active, 0, -1, withscores=True))
        missing = [t.visitor for t in tickets if str(t.index) not in active]
        assert not missing, f"{len(missing)} not admitted, e.g. {missing[:3]}"
        claims = [
            Claims(ADMISSION, sale.id, t.visitor, t.index, exp=active[str(t.index)] / 1000)
            for t in tickets
        ]
        # ...and they are indeed what the poll hands out
        told = crowd()
        polls = await gather_chunked([told.poll(sale.id, t) for t in tickets[:50]])
        for poll, expected in zip(polls, claims, strict=False):
            assert poll.status.state is State.ADMITTED, poll.status
            assert (
                signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
                == expected
            )
        return claims

    return admit


AdmittedShoppers = Callable[..., Awaitable[list[Claims]]]


@pytest.fixture
def admitted_shoppers(room: WaitingRoom, clock: Clock, signer: Signer) -> AdmittedShoppers:
    """`await admitted_shoppers(sale, n)`: n new shoppers, admitted, as their admission claims.

    Moves the room clock past the opening (and opens the room) if needed, joins the shoppers,
    admits them in as many batches as that takes and polls each for the admission token the
    status endpoint hands out (`signer.sign(claims)` gives that token back). The sale's
    batch_size and max_active must allow them. At most `chunk` calls run at once.
    """

    async def shoppers(
        sale: Sale, count: int, *, prefix: str | None = None, chunk: int = 50
    ) -> list[Claims]:
        prefix = prefix or f"shopper-{secrets.token_hex(3)}"
        opens = sale.opens_at.timestamp()
        if clock() < opens:
            clock.advance(opens - clock() + 1)
        if not (await room.view(sale.id, fresh=True)).opened:
            opened = await room.admit_once(sale.id)
            assert opened.outcome == "opened", opened
        visitors = [f"{prefix}-{n:05d}" for n in range(count)]
        tickets: list[Claims] = []
        for start in range(0, count, chunk):  # joined after the opening: present, in line
            for joined in await asyncio.gather(
                *(room.join(sale.id, v, "127.0.0.1") for v in visitors[start : start + chunk])
            ):
                assert joined.outcome == "ok" and joined.claims, joined
                tickets.append(joined.claims)
        admitted = 0
        for _ in range(2 * count // sale.batch_size + 10):
            result = await room.admit_once(sale.id)
            if result.outcome == "ok":
                admitted += result.admitted
            elif result.outcome == "wait":
                clock.advance(sale.batch_interval_ms / 1000)
            elif result.outcome != "idle":
                raise AssertionError(f"admission stopped: {result}")
            if admitted >= count or result.outcome == "idle":
                break
        assert admitted == count, f"admitted {admitted} of {count}: is max_active too small?"
        claims: list[Claims] = []
        for start in range(0, count, chunk):
            for poll in await asyncio.gather(
                *(room.poll(sale.id, t) for t in tickets[start : start + chunk])
            ):
                assert poll.admission_token, poll.status
                claims.append(
                    signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
                )
        return claims

    return shoppers
