"""Orders in PostgreSQL: the system of record and the last guard against overselling.

Every write is idempotent (keyed by order id, guarded by the current status), so a batch that
is replayed after a crash changes nothing twice. Constraints do the guarding: a hold that
would take held + sold past stock, sell a seat twice, break the per-shopper limit or reuse an
idempotency key is refused by the database itself, and the order is recorded as `failed`
with the reason, never lost.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from flashsale.waiting_room.db import Connection, one

CANCELLING = "cancelled by the shopper; the refund is under way"
CANCELLED = "cancelled and refunded"

REFUSALS = {
    "inventory_never_oversold": "sold out: the database refused a hold beyond the stock",
    "shopper_within_limit": "the per-shopper limit is reached",
    "order_seats_sold_once": "a chosen seat was already sold",
    "orders_idempotency_once": "this idempotency key was already used for another order",
}


class MalformedEntry(ValueError):
    """A stream entry that can never be applied (missing or unreadable fields)."""


@dataclass(frozen=True)
class HoldRecord:
    order_id: str
    sale_id: str
    visitor: str
    index: int
    quantity: int
    expires_ms: int
    amount_cents: int
    limit: int
    seats: tuple[int, ...] = ()
    idempotency_key: str | None = None
    created_ms: int = 0
    idempotency_fingerprint: str | None = None  # the request the key is bound to

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> HoldRecord:
        """From a stream entry or a hold hash; MalformedEntry when it cannot be read."""
        try:
            order_id = str(uuid.UUID(fields["order" if "order" in fields else "id"]))
            seats = tuple(int(s) for s in fields.get("seats", "").split(",") if s)
            record = cls(
                order_id=order_id,
                sale_id=fields["sale"],
                visitor=fields["visitor"],
                index=int(fields["j"]),
                quantity=int(fields["qty"]),
                expires_ms=int(fields["expires_ms"]),
                amount_cents=int(fields.get("amount") or 0),
                limit=int(fields["limit"]),
                seats=seats,
                idempotency_key=fields.get("idem") or None,
                created_ms=int(fields.get("at") or fields.get("created_ms") or 0),
                idempotency_fingerprint=fields.get("idem_fp") or None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedEntry(f"unreadable hold: {type(exc).__name__}: {exc}") from None
        if record.quantity < 1 or (record.seats and len(record.seats) != record.quantity):
            raise MalformedEntry("hold quantity does not match its seats")
        return record


@dataclass(frozen=True)
class Release:
    order_id: str
    status: str  # released | cancelled
    reason: str
    # the status it ends from: a hold (`held`), or an order whose cancellation was recorded
    # (`cancelling`: confirmed, refund under way); any other status leaves it as it is
    from_status: str = "held"


async def begin_cancel(conn: Connection, sale_id: str, order_id: str) -> str:
    """Record that a confirmed order is being cancelled (`confirmed` -> `cancelling`) before
    the refund is asked for: an interruption anywhere later leaves a row that says what is
    left to do, and the sweeper finishes it. Its units stay sold until the cancellation ends.
    Returns the order's status now (`cancelling`, or what it already was)."""
    async with conn.transaction():
        await lock_inventory(conn, sale_id)
        row = await conn.fetchrow(
            "UPDATE orders SET status = 'cancelling', reason = $2, updated_at = now()"
            " WHERE id = $1 AND status = 'confirmed' RETURNING status",
            order_id,
            CANCELLING,
        )
        if row is not None:
            await conn.execute(
                "INSERT INTO order_events (order_id, status, reason) VALUES ($1, $2, $3)",
                order_id,
                "cancelling",
                CANCELLING,
            )
            return "cancelling"
        current = await conn.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        return str(current) if current is not None else "missing"


@dataclass
class Applied:
    refused: dict[str, str] = field(default_factory=dict)  # order id -> reason
    inserted: int = 0
    released: int = 0


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _refusal(exc: asyncpg.PostgresError) -> str | None:
    return REFUSALS.get(getattr(exc, "constraint_name", None) or "")


async def _insert_holds(
    conn: Connection, holds: list[HoldRecord], currency: str, label: Callable[[int], str]
) -> list[HoldRecord]:
    """Insert holds and count them against stock, limits and seats; returns those new."""
    rows = await conn.fetch(
        """
        INSERT INTO orders (id, sale_id, visitor, queue_index, idempotency_key, quantity,
                            status, amount_cents, currency, hold_expires_at, created_at,
                            idempotency_fingerprint)
        SELECT o.id, o.sale_id, o.visitor, o.j, o.idem, o.qty, 'held', o.amount, $10,
               o.expires, coalesce(o.created, now()), o.fp
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[],
                    $7::bigint[], $8::timestamptz[], $9::timestamptz[], $11::text[])
             AS o(id, sale_id, visitor, j, idem, qty, amount, expires, created, fp)
        ON CONFLICT (id) DO NOTHING
        RETURNING id
        """,
        [h.order_id for h in holds],
        [h.sale_id for h in holds],
        [h.visitor for h in holds],
        [h.index for h in holds],
        [h.idempotency_key for h in holds],
        [h.quantity for h in holds],
        [h.amount_cents for h in holds],
        [_ts(h.expires_ms) for h in holds],
        [_ts(h.created_ms) if h.created_ms else None for h in holds],
        currency,
        [h.idempotency_fingerprint for h in holds],
    )
    new_ids = {str(r["id"]) for r in rows}
    new = [h for h in holds if h.order_id in new_ids]
    if not new:
        return []
    per_sale: dict[str, int] = defaultdict(int)
    per_shopper: dict[tuple[str, str], list[int]] = {}
    for h in new:
        per_sale[h.sale_id] += h.quantity
        entry = per_shopper.setdefault((h.sale_id, h.visitor), [0, h.limit])
        entry[0] += h.quantity
    for sale_id, units in per_sale.items():
        await conn.execute(
            "UPDATE sale_inventory SET held = held + $2 WHERE sale_id = $1", sale_id, units
        )
    keys = list(per_shopper)
    await conn.execute(
        """
        INSERT INTO shopper_totals (sale_id, visitor, units, limit_units)
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[])
        ON CONFLICT (sale_id, visitor) DO UPDATE
        SET units = shopper_totals.units + EXCLUDED.units, limit_units = EXCLUDED.limit_units
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [per_shopper[k][0] for k in keys],
        [per_shopper[k][1] for k in keys],
    )
    seated = [(h, s) for h in new for s in h.seats]
    if seated:
        await conn.execute(
            """
            INSERT INTO order_seats (order_id, sale_id, seat, label)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[])
            """,
            [h.order_id for h, _ in seated],
            [h.sale_id for h, _ in seated],
            [s for _, s in seated],
            [label(s) for _, s in seated],
        )
    await conn.execute(
        "INSERT INTO order_events (order_id, status) SELECT unnest($1::uuid[]), 'held'",
        [h.order_id for h in new],
    )
    return new


async def _insert_failed(conn: Connection, hold: HoldRecord, currency: str, reason: str) -> None:
    reused = reason == REFUSALS["orders_idempotency_once"]
    inserted = await conn.fetchval(
        """
        INSERT INTO orders (id, sale_id, visitor, queue_index, idempotency_key, quantity,
                            status, reason, amount_cents, currency, hold_expires_at,
                            idempotency_fingerprint)
        VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, $8, $9, $10, $11)
        ON CONFLICT (id) DO NOTHING RETURNING id
        """,
        hold.order_id,
        hold.sale_id,
        hold.visitor,
        hold.index,
        None if reused else hold.idempotency_key,
        hold.quantity,
        reason,
        hold.amount_cents,
        currency,
        _ts(hold.expires_ms),
        None if reused else hold.idempotency_fingerprint,
    )
    if inserted:
        await conn.execute(
            "INSERT INTO order_events (order_id, status, reason) VALUES ($1, 'failed', $2)",
            hold.order_id,
            reason,
        )


async def record_holds(
    conn: Connection,
    holds: list[HoldRecord],
    *,
    currency: str,
    label: Callable[[int], str] = str,
) -> Applied:
    """Record holds inside the caller's transaction: all at once when they fit, one by one
    (each in its own savepoint) when the database refuses some, which become `failed`.

    A replayed hold that an earlier run already recorded as `failed` is reported refused
    again, so a crash between that commit and telling Redis cannot leave Redis believing in
    the hold."""
    applied = Applied()
    if not holds:
        return applied
    try:
        async with conn.transaction():
            new = await _insert_holds(conn, holds, currency, label)
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.CheckViolationError):
        new = []
        for hold in holds:
            try:
                async with conn.transaction():
                    new += await _insert_holds(conn, [hold], currency, label)
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.CheckViolationError) as exc:
                reason = _refusal(exc)
                if reason is None:
                    raise
                async with conn.transaction():
                    await _insert_failed(conn, hold, currency, reason)
                applied.refused[hold.order_id] = reason
    applied.inserted = len(new)
    seen = {h.order_id for h in new} | set(applied.refused)
    replayed = [h.order_id for h in holds if h.order_id not in seen]
    if replayed:
        for row in await conn.fetch(
            "SELECT id, reason FROM orders WHERE id = ANY($1::uuid[]) AND status = 'failed'",
            replayed,
        ):
            applied.refused[str(row["id"])] = row["reason"] or "refused by the database"
    return applied


async def release_orders(conn: Connection, releases: Iterable[Release]) -> int:
    """End orders (held -> released/cancelled, or cancelling -> cancelled) and give their
    units back; an order no longer in its release's `from_status` is left alone, which makes
    replays harmless."""
    by_status: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for release in releases:
        by_status[(release.status, release.reason, release.from_status)].append(release.order_id)
    total = 0
    for (status, reason, from_status), ids in by_status.items():
        counter = "held" if from_status == "held" else "sold"
        rows = await conn.fetch(
            """
            UPDATE orders SET status = $2, reason = $3, updated_at = now()
            WHERE id = ANY($1::uuid[]) AND status = $4
            RETURNING id, sale_id, visitor, quantity
            """,
            ids,
            status,
            reason,
            from_status,
        )
        if not rows:
            continue
        total += len(rows)
        per_sale: dict[str, int] = defaultdict(int)
        per_shopper: dict[tuple[str, str], int] = defaultdict(int)
        for r in rows:
            per_sale[r["sale_id"]] += r["quantity"]
            per_shopper[(r["sale_id"], r["visitor"])] += r["quantity"]
        for sale_id, units in per_sale.items():
            await conn.execute(
                f"UPDATE sale_inventory SET {counter} = {counter} - $2 WHERE sale_id = $1",
                sale_id,
                units,
            )
        keys = list(per_shopper)
        await conn.execute(
            """
            UPDATE shopper_totals t SET units = t.units - d.units
            FROM unnest($1::text[], $2::text[], $3::int[]) AS d(sale_id, visitor, units)
            WHERE t.sale_id = d.sale_id AND t.visitor = d.visitor
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [per_shopper[k] for k in keys],
        )
        ended = [r["id"] for r in rows]
        await conn.execute(
            "UPDATE order_seats SET active = false WHERE order_id = ANY($1::uuid[])", ended
        )
        await conn.execute(
            "INSERT INTO order_events (order_id, status, reason) SELECT unnest($1::uuid[]), $2, $3",
            ended,
            status,
            reason,
        )
    return total


async def lock_inventory(conn: Connection, sale_id: str) -> None:
    """Take the sale's inventory row first in every transaction that writes orders: one lock
    order for the persister, confirmations and cancellations, so they queue, never deadlock."""
    await conn.execute("SELECT 1 FROM sale_inventory WHERE sale_id = $1 FOR UPDATE", sale_id)


async def confirm_order(
    conn: Connection,
    hold: HoldRecord,
    payment_ref: str,
    *,
    currency: str,
    label: Callable[[int], str] = str,
) -> tuple[str, str]:
    """Make a paid hold a confirmed order; returns (status, reason).

    Records the hold first if the persister has not yet, so confirmation never waits on
    the stream; a hold the database refuses ends `failed` and the caller refunds it.
    """
    async with conn.transaction():
        await lock_inventory(conn, hold.sale_id)
        row = await conn.fetchrow(
            "SELECT status, reason FROM orders WHERE id = $1 FOR UPDATE", hold.order_id
        )
        if row is None:
            await record_holds(conn, [hold], currency=currency, label=label)
            row = one(
                await conn.fetchrow(
                    "SELECT status, reason FROM orders WHERE id = $1 FOR UPDATE", hold.order_id
                )
            )
        if row["status"] != "held":
            return row["status"], row["reason"] or ""
        await conn.execute(
            "UPDATE orders SET status = 'confirmed', payment_ref = $2, updated_at = now()"
            " WHERE id = $1",
            hold.order_id,
            payment_ref,
        )
        await conn.execute(
            "UPDATE sale_inventory SET held = held - $2, sold = sold + $2 WHERE sale_id = $1",
            hold.sale_id,
            hold.quantity,
        )
        await conn.execute(
            "INSERT INTO order_events (order_id, status) VALUES ($1, 'confirmed')",
            hold.order_id,
        )
        return "confirmed", ""
