"""Shared fixtures: real Redis and real PostgreSQL (from REDIS_URL / DATABASE_URL), and the kind
of each test (its folder: unit, integration, system, browser, ...) as a marker.

REDIS_URL may name one node of a Redis Cluster: the clients are then cluster clients (the
server is asked, as FLASHSALE_REDIS_CLUSTER=auto does), and the same tests run on a cluster;
`make test` runs the room, purchase, persister, admitter and demo tests a second time so.

Each test session works in its own PostgreSQL schema and under its own Redis key prefix, and
removes both at the end, so tests never disturb other data on the same servers.

One Kubernetes control plane (etcd + kube-apiserver, built by `make envtest`) serves the whole
session: `kube`, `admin` and `flashsale_crd` are shared by tests/kubernetes and tests/image, and
started only when a test asks for them. `cluster_facts` gathers what those tests establish for
`make cluster-check` (tests/support/facts.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
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
from flashsale.waiting_room.tokens import Signer
from tests.support import ADMIN_TOKEN, Admit, Clock, app_for, make_admit, sale_body
from tests.support.facts import cluster_facts  # noqa: F401  (a fixture)
from tests.support.kubernetes import ControlPlane, control_plane, install_crd

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
    """`await admit(sale, shoppers)`: see tests.support.make_admit."""
    return make_admit(room, clock, signer)


# -- the Kubernetes control plane (tests/kubernetes, tests/image) -----------------------------


@pytest.fixture(scope="session")
def kube() -> Iterator[ControlPlane]:
    """etcd and kube-apiserver, started once for the session by the first test that asks,
    stopped at its end (tests/support/kubernetes.py)."""
    with control_plane() as plane:
        yield plane


@pytest.fixture(scope="session")
def admin(kube: ControlPlane) -> Iterator[httpx.Client]:
    """A client of the API server in `system:masters`."""
    with kube.client() as client:
        yield client


@pytest.fixture(scope="module")
def flashsale_crd(admin: httpx.Client) -> dict[str, Any]:
    """The FlashSale CRD of the chart, applied and Established (a chart test may have replaced
    it: each module puts the file's back)."""
    return install_crd(admin)
