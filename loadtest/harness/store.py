"""Reading a sale's facts from PostgreSQL and Redis for `invariants.py`, and removing what a
run left behind. Every Redis key a harness removes goes through `remove_keys`, the one place
that knows how to delete keys by pattern."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.keys import SaleKeys
from flashsale.waiting_room.redis_client import (
    RedisClient,
    binary,
    node_of,
    open_redis,
    primaries,
    remove_matching,
    text_map,
    texts,
)
from flashsale.waiting_room.stock import PERSISTER_GROUP
from loadtest.harness.invariants import Ledger, Order, RedisStock, Stream


def keys_of(settings: Settings, sale_id: str) -> SaleKeys:
    return SaleKeys(settings.redis_prefix, sale_id, settings.join_buckets)


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.database_url,
        server_settings={"search_path": settings.database_schema},
        timeout=10,
        command_timeout=30,
    )


async def read_ledger(conn: asyncpg.Connection, sale_id: str) -> Ledger:
    """The sale's inventory row and orders (with seats) from PostgreSQL."""
    inventory = await conn.fetchrow(
        "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale_id
    )
    if inventory is None:
        raise LookupError(f"PostgreSQL has no inventory for sale {sale_id}")
    rows = await conn.fetch(
        "SELECT o.id::text AS id, o.status, o.quantity, coalesce(o.reason, '') AS reason,"
        " o.visitor, o.idempotency_key,"
        " coalesce(array_agg(s.seat ORDER BY s.seat) FILTER (WHERE s.seat IS NOT NULL),"
        " '{}') AS seats"
        " FROM orders o LEFT JOIN order_seats s ON s.order_id = o.id"
        " WHERE o.sale_id = $1 GROUP BY o.id",
        sale_id,
    )
    return Ledger(
        inventory["stock"],
        inventory["held"],
        inventory["sold"],
        {
            r["id"]: Order(
                r["id"],
                r["status"],
                r["quantity"],
                r["reason"],
                tuple(r["seats"]),
                r["visitor"],
                r["idempotency_key"],
            )
            for r in rows
        },
    )


async def read_stream(redis: RedisClient, keys: SaleKeys) -> Stream:
    """The order stream's backlog for the persisters' group, and the dead letters (a Redis
    client that decodes)."""
    length = await redis.xlen(keys.orders_stream)
    lag, pending = length, 0
    with contextlib.suppress(Exception):  # no stream or no group: nothing was read
        for group in await redis.xinfo_groups(keys.orders_stream):
            if group["name"] == PERSISTER_GROUP:
                lag = int(group.get("lag") or 0)
                pending = int(group["pending"])
    letters = await redis.xrange(keys.dead_letters) or []
    dead = tuple(text_map(fields or {}) for _, fields in letters)
    return Stream(length, lag, pending, dead)


async def read_redis_stock(redis: RedisClient, keys: SaleKeys) -> RedisStock:
    raw = await redis.hgetall(keys.inventory)

    def number(name: str) -> int | None:
        return int(raw[name]) if name in raw else None

    return RedisStock(
        number("stock"),
        number("avail"),
        number("held"),
        number("sold"),
        await redis.zcard(keys.holds),
    )


def bits(raw: bytes | None) -> set[int]:
    """Offsets set in a Redis bitmap (SETBIT order: the first byte's high bit is 0)."""
    out = set()
    for i, byte in enumerate(raw or b""):
        if byte:
            for k in range(8):
                if byte & (0x80 >> k):
                    out.add(i * 8 + k)
    return out


@dataclass(frozen=True)
class Room:
    """The room's memory in Redis: meta hash, admitted join indices, recent batches."""

    meta: dict[str, str]
    admitted: set[int]
    batches: list[str]


async def read_room(settings: Settings, sale_id: str) -> Room:
    keys = keys_of(settings, sale_id)
    redis = await open_redis(settings)
    raw = await open_redis(settings, decode=False)
    try:
        meta = text_map(await redis.hgetall(keys.meta))
        batches = texts(await redis.lrange(keys.batches, 0, -1))
        admitted = bits(binary(await raw.get(keys.admitted)))
    finally:
        await redis.aclose()
        await raw.aclose()
    return Room(meta, admitted, batches)


def parse_batches(raw: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """`t_ms:frontier:admitted:skipped` entries of the batch list, as numbers."""
    out = []
    for item in raw:
        t, frontier, admitted, skipped = (int(x) for x in item.split(":")[:4])
        out.append((t, frontier, admitted, skipped))
    return out


@dataclass(frozen=True)
class Facts:
    """Everything `invariants.judge` needs about one sale, read at one moment."""

    ledger: Ledger
    stream: Stream
    redis: RedisStock


async def read_facts(settings: Settings, sale_id: str) -> Facts:
    keys = keys_of(settings, sale_id)
    redis = await open_redis(settings)
    conn = await connect(settings)
    try:
        return Facts(
            await read_ledger(conn, sale_id),
            await read_stream(redis, keys),
            await read_redis_stock(redis, keys),
        )
    finally:
        await conn.close()
        await redis.aclose()


# -- clean-up --------------------------------------------------------------------------------


async def remove_keys(
    redis: RedisClient, match: str | None = None, names: Sequence[str] = ()
) -> int:
    """Delete the keys matching the SCAN pattern `match`, and the keys `names`: every Redis
    clean-up of the harness goes through here (on every primary of a cluster). Returns how
    many were deleted."""
    removed = 0
    if match is not None:
        removed += await remove_matching(redis, match)
    for start in range(0, len(names), 500):
        removed += await redis.unlink(*names[start : start + 500])
    return removed


async def off_first_shard(settings: Settings, redis: RedisClient, stem: str) -> str:
    """A fresh sale id; on a Redis Cluster, one whose keys live on a primary other than the
    first (the one serving slot 0), so a run shows a sale on any shard working end to end."""
    nodes = await primaries(redis)
    while True:
        sale_id = f"{stem}-{secrets.token_hex(2)}"
        if len(nodes) == 1 or await node_of(redis, keys_of(settings, sale_id).meta) != nodes[0]:
            return sale_id


async def drop_install(settings: Settings) -> None:
    """Remove everything under a run's own Redis prefix and PostgreSQL schema."""
    redis = await open_redis(settings, decode=False)
    try:
        await remove_keys(redis, f"{settings.redis_prefix}:*")
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
    finally:
        await conn.close()


async def remove_sale(settings: Settings, sale_id: str) -> None:
    """Drop a finished sale's keys from Redis, and the simulated payment provider's records of
    its orders (they would stay a week), once its admitter and persister are stopped (until
    then they may reinstall the room of a sale they still hold in their list of live ones).
    The closed sale and its orders stay in PostgreSQL, a record of the run.

    A persister keeps draining closed sales for a day and re-creates their order stream,
    empty, when it is gone: this run's persister did so for the earlier sales of the same
    install, so their empty streams, left without a room, go too."""
    from flashsale.waiting_room.payments import SimulatedProvider

    redis = await open_redis(settings)
    try:
        conn = await connect(settings)
        try:
            orders = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id::text AS id FROM orders WHERE sale_id = $1", sale_id
                )
            ]
            earlier = [
                r["id"]
                for r in await conn.fetch(  # the persister's window is a day
                    "SELECT id FROM sales WHERE closed_at > now() - interval '2 days' AND id <> $1",
                    sale_id,
                )
            ]
        finally:
            await conn.close()
        provider = SimulatedProvider(redis, settings.redis_prefix)  # its key names, not a copy
        empty: list[str] = []
        for old in earlier:
            keys = keys_of(settings, old)
            if (
                not await redis.exists(keys.meta)
                and await redis.type(keys.orders_stream) == "stream"
                and await redis.xlen(keys.orders_stream) == 0
            ):
                empty.append(keys.orders_stream)
        await remove_keys(
            redis,
            keys_of(settings, sale_id).pattern,
            [*(provider._record(o) for o in orders), *empty],
        )
    finally:
        await redis.aclose()
