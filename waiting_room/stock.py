"""Stock in Redis, derived from PostgreSQL: pre-warming before a sale and reconciling after.

Redis only ever holds a copy of what PostgreSQL allows (stock minus sold minus held). The
copy is loaded once per sale (fenced, so it cannot clobber a running sale) and checked by
`reconcile`, which can rebuild it from PostgreSQL when the two disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from flashsale.waiting_room.db import one
from flashsale.waiting_room.ledger import Release, release_orders
from flashsale.waiting_room.payments import GuardedProvider, PaymentStatus, ProviderError
from flashsale.waiting_room.redis_client import RedisClient, binary, texts
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.seating import taken_from_bitmap

PERSISTER_GROUP = "persisters"


class NotDrained(Exception):
    """A repair was asked for while order entries still wait to reach PostgreSQL."""


@dataclass
class Report:
    sale: str
    ok: bool
    redis: dict[str, int | None]
    postgres: dict[str, int]
    stream: dict[str, int]
    differences: list[str] = field(default_factory=list)
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stock:
    def __init__(
        self,
        redis: RedisClient,
        raw_redis: RedisClient,
        pool: asyncpg.Pool,
        room: WaitingRoom,
        payments: GuardedProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.payments = payments
        self.redis = redis
        self.raw_redis = raw_redis
        self.pool = pool
        self.room = room
        self.clock = clock

    async def is_warm(self, sale_id: str) -> bool:
        return bool(await self.redis.hexists(self.room.keys(sale_id).inventory, "warmed"))

    async def prewarm(self, sale: Sale, *, force: bool = False) -> dict[str, Any]:
        """Load availability from PostgreSQL into Redis. Refused for a sale already warm
        unless `force` (a repair), so a running sale's counters are never clobbered."""
        await self.room.install(sale)
        async with self.pool.acquire() as conn:
            inv = one(
                await conn.fetchrow(
                    "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
                )
            )
            taken = [
                r["seat"]
                for r in await conn.fetch(
                    "SELECT seat FROM order_seats WHERE sale_id = $1 AND active", sale.id
                )
            ]
        stock, held, sold = inv["stock"], inv["held"], inv["sold"]
        bitmap = b""
        if sale.seated and taken:
            buffer = bytearray((stock + 7) // 8)
            for seat in taken:
                buffer[seat // 8] |= 0x80 >> (seat % 8)
            bitmap = bytes(buffer)
        keys = self.room.keys(sale.id)
        result = await self.room.scripts.prewarm(
            keys=[keys.meta, keys.inventory, keys.seats],
            args=[
                1 if force else 0,
                stock,
                stock - held - sold,
                held,
                sold,
                int(self.clock() * 1000),
                1 if sale.seated else 0,
                bitmap,
            ],
        )
        self.room.forget(sale.id)
        return {
            "sale": sale.id,
            "outcome": result[0],
            "stock": stock,
            "available": stock - held - sold,
            "held": held,
            "sold": sold,
        }

    async def stream_backlog(self, sale_id: str) -> dict[str, int]:
        """Entries not yet read by the persisters (lag) and read but not committed (pending)."""
        stream = self.room.keys(sale_id).orders_stream
        length = await self.redis.xlen(stream)
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:  # no stream yet: nothing is waiting
            groups = []
        for group in groups:
            if group["name"] == PERSISTER_GROUP:
                lag = group.get("lag")
                return {
                    "length": length,
                    "pending": int(group["pending"]),
                    "lag": int(lag) if lag is not None else length,
                }
        return {"length": length, "pending": 0, "lag": length}

    async def reconcile(self, sale: Sale, *, repair: bool = False, force: bool = False) -> Report:
        """Check stock = sold + held + available across Redis and PostgreSQL.

        With `repair`, rebuild Redis from PostgreSQL: only once the stream is drained (else
        holds not yet written would be forgotten), unless `force`.
        """
        keys = self.room.keys(sale.id)
        raw = await self.redis.hgetall(keys.inventory)
        inv = {k: (int(raw[k]) if k in raw else None) for k in ("stock", "avail", "held", "sold")}
        open_holds = await self.redis.zcard(keys.holds)
        async with self.pool.acquire() as conn:
            row = one(
                await conn.fetchrow(
                    "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
                )
            )
            counted = one(
                await conn.fetchrow(
                    """SELECT coalesce(sum(quantity) FILTER (WHERE status = 'held'), 0) AS held,
                          coalesce(sum(quantity)
                                   FILTER (WHERE status IN ('confirmed', 'cancelling')), 0) AS sold
                   FROM orders WHERE sale_id = $1""",
                    sale.id,
                )
            )
            seats = {
                r["seat"]
                for r in await conn.fetch(
                    "SELECT seat FROM order_seats WHERE sale_id = $1 AND active", sale.id
                )
            }
        pg = {
            "stock": row["stock"],
            "held": row["held"],
            "sold": row["sold"],
            "held_in_orders": int(counted["held"]),
            "sold_in_orders": int(counted["sold"]),
        }
        backlog = await self.stream_backlog(sale.id)
        diffs: list[str] = []
        if pg["held"] + pg["sold"] > pg["stock"]:
            diffs.append("postgres: held + sold exceed stock")
        if (pg["held"], pg["sold"]) != (pg["held_in_orders"], pg["sold_in_orders"]):
            diffs.append("postgres: inventory counters differ from the orders")
        if inv["avail"] is None:
            diffs.append("redis: the sale is not warm")
        else:
            total = (inv["avail"] or 0) + (inv["held"] or 0) + (inv["sold"] or 0)
            if total != inv["stock"]:
                diffs.append(f"redis: available + held + sold = {total}, stock = {inv['stock']}")
            if inv["stock"] != pg["stock"]:
                diffs.append(f"stock: redis {inv['stock']}, postgres {pg['stock']}")
            if inv["sold"] != pg["sold"]:
                diffs.append(f"sold: redis {inv['sold']}, postgres {pg['sold']}")
            drained = backlog["lag"] == 0 and backlog["pending"] == 0
            if drained and inv["held"] != pg["held"]:
                diffs.append(f"held: redis {inv['held']}, postgres {pg['held']}")
            if (inv["avail"] or 0) > pg["stock"] - pg["sold"] - pg["held"] and drained:
                diffs.append("redis offers more stock than postgres allows")
            if sale.seated and drained:
                bitmap = binary(await self.raw_redis.get(keys.seats))
                redis_seats = taken_from_bitmap(bitmap, sale.stock)
                if redis_seats != seats:
                    diffs.append(f"seats: {len(redis_seats ^ seats)} differ")
            if drained:
                unknown = await self._holds_redis_forgot(sale)
                if unknown:
                    diffs.append(
                        f"postgres: {len(unknown)} holds Redis does not know "
                        f"({sum(unknown.values())} units)"
                    )
        report = Report(
            sale.id,
            ok=not diffs,
            redis={**inv, "open_holds": open_holds},
            postgres=pg,
            stream=backlog,
            differences=diffs,
        )
        if repair and diffs:
            if not force and (backlog["lag"] or backlog["pending"]):
                raise NotDrained(
                    f"{backlog['lag']} entries unread and {backlog['pending']} pending; let the "
                    "persister drain the stream first (or force)"
                )
            report.differences += await self._release_orphans(sale)
            await self.prewarm(sale, force=True)
            unresolved = [d for d in report.differences if d.startswith("orphan")]
            report = await self.reconcile(sale)
            report.differences += unresolved
            report.ok = not report.differences
            report.repaired = True
        return report

    async def _holds_redis_forgot(self, sale: Sale) -> dict[str, int]:
        """Holds PostgreSQL counts (order id -> units) that are not among Redis's open holds:
        Redis lost them (a restart without persistence, a failover), and a pre-warm then
        copied PostgreSQL's held units into Redis, where no expiry will ever release them.
        Read with the stream drained; a hold released meanwhile (its release written since)
        is read again from PostgreSQL before it counts."""
        keys = self.room.keys(sale.id)
        rows = await self.pool.fetch(
            "SELECT id::text AS id, quantity FROM orders WHERE sale_id = $1 AND status = 'held'",
            sale.id,
        )
        if not rows:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in rows:
                pipe.zscore(keys.holds, r["id"])
            scores = await pipe.execute()
        missing = [r["id"] for r, score in zip(rows, scores, strict=True) if score is None]
        if not missing:
            return {}
        still = await self.pool.fetch(
            "SELECT id::text AS id, quantity FROM orders"
            " WHERE id = ANY($1::uuid[]) AND status = 'held'",
            missing,
        )
        return {r["id"]: int(r["quantity"]) for r in still}

    async def _release_orphans(self, sale: Sale) -> list[str]:
        """Holds PostgreSQL still counts but Redis no longer knows (Redis lost them): once
        expired they are released in PostgreSQL, as the sweeper would have done, after the
        payment provider confirms they were not paid. Returns what it could not settle."""
        keys = self.room.keys(sale.id)
        rows = await self.pool.fetch(
            "SELECT id FROM orders WHERE sale_id = $1 AND status = 'held' AND hold_expires_at < $2",
            sale.id,
            datetime.fromtimestamp(self.clock(), UTC),  # the clock the holds' expiries come from
        )
        orphans, unsettled = [], []
        open_holds = set(texts(await self.redis.zrange(keys.holds, 0, -1)))
        for r in rows:
            order_id = str(r["id"])
            if order_id in open_holds:
                continue
            if self.payments is not None:
                try:
                    paid = await self.payments.status(order_id) is PaymentStatus.PAID
                except ProviderError:
                    paid = True  # cannot tell: keep it rather than release a paid hold
                if paid:
                    unsettled.append(f"orphan hold {order_id} may be paid: settle it by hand")
                    continue
            orphans.append(Release(order_id, "released", "hold expired (repair)"))
        if orphans:
            async with self.pool.acquire() as conn, conn.transaction():
                await release_orders(conn, orphans)
        return unsettled
