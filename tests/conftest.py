"""Shared fixtures: real Redis and real PostgreSQL (from REDIS_URL / DATABASE_URL).

Each test session works in its own PostgreSQL schema and under its own Redis key prefix, and
removes both at the end, so tests never disturb other data on the same servers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
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
from waiting_room.tokens import Signer

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
        "admission": {"batch_size": 10, "batch_interval_ms": 50, "max_active": 50,
                      "admission_ttl_seconds": 600, "abandon_after_seconds": 60},
    }
    body.update(overrides)
    return body


@pytest.fixture
def make_sale(sales: Sales) -> Callable[..., Any]:
    async def make(**overrides: Any) -> Sale:
        return await sales.create(sale_body(**overrides))

    return make


@pytest.fixture
def services(settings: Settings, redis: Redis, raw_redis: Redis, pool: asyncpg.Pool,
             room: WaitingRoom, sales: Sales) -> Services:
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
