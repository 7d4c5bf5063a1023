"""Sales in PostgreSQL, kept in step with their rooms in Redis.

This is the one path that creates, changes and closes sales: the admin API and the operator
both call it, so a rule enforced here holds everywhere.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import asyncpg

from flashsale.waiting_room.db import Connection, one
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale, ValidationError, parse_sale


class SaleNotFound(LookupError):
    pass


class SaleConflict(Exception):
    """The request is valid but clashes with the sale's current state."""


_COLUMNS = [f.name for f in fields(Sale)]
_WRITABLE = [c for c in _COLUMNS if c not in ("created_at", "updated_at", "closed_at")]


def _sale(row: asyncpg.Record) -> Sale:
    values = dict(row)
    if values.get("seat_map") is not None:
        values["seat_map"] = json.loads(values["seat_map"])
    return Sale(**{name: values[name] for name in _COLUMNS})


def _params(sale: Sale) -> list[Any]:
    row = sale.as_row()
    row["seat_map"] = json.dumps(sale.seat_map) if sale.seat_map is not None else None
    return [row[c] for c in _WRITABLE]


class Sales:
    def __init__(
        self,
        pool: asyncpg.Pool,
        room: WaitingRoom,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.room = room
        self.clock = clock

    async def get(self, sale_id: str) -> Sale:
        row = await self.pool.fetchrow("SELECT * FROM sales WHERE id = $1", sale_id)
        if row is None:
            raise SaleNotFound(sale_id)
        return _sale(row)

    async def list(self, *, include_closed: bool = True) -> builtins.list[Sale]:
        query = "SELECT * FROM sales"
        if not include_closed:
            query += " WHERE closed_at IS NULL AND closes_at > now()"
        return [_sale(r) for r in await self.pool.fetch(query + " ORDER BY opens_at, id")]

    async def live(self, horizon_seconds: int = 86_400) -> builtins.list[Sale]:
        """Sales not closed whose opening is within the horizon (the admitter's work list)."""
        rows = await self.pool.fetch(
            "SELECT * FROM sales WHERE closed_at IS NULL AND closes_at > now()"
            " AND opens_at < now() + make_interval(secs => $1) ORDER BY opens_at",
            horizon_seconds,
        )
        return [_sale(r) for r in rows]

    async def recent(self, closed_within_seconds: int) -> builtins.list[Sale]:
        """Sales opening within a day or running, or closed less than the given time ago (the
        persister's work list: orders of a closed sale still drain)."""
        rows = await self.pool.fetch(
            "SELECT * FROM sales WHERE opens_at < now() + interval '1 day'"
            " AND coalesce(closed_at, closes_at) > now() - make_interval(secs => $1)"
            " ORDER BY opens_at",
            closed_within_seconds,
        )
        return [_sale(r) for r in rows]

    def _check_identity(self, sale: Sale) -> None:
        """A sale may require identity only where an identity provider is configured."""
        if sale.identity_required and not self.room.settings.identity_configured:
            raise ValidationError(
                "identity.required",
                "this install has no identity provider: set FLASHSALE_IDENTITY_JWKS_URL (or "
                "_FILE), FLASHSALE_IDENTITY_ISSUER and FLASHSALE_IDENTITY_AUDIENCE",
            )

    async def create(self, body: Any) -> Sale:
        sale = parse_sale(body)
        self._check_identity(sale)
        slots = ", ".join(f"${i}" for i in range(1, len(_WRITABLE) + 1))
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = one(
                    await conn.fetchrow(
                        f"INSERT INTO sales ({', '.join(_WRITABLE)}) VALUES ({slots}) RETURNING *",
                        *_params(sale),
                    )
                )
                await conn.execute(
                    "INSERT INTO sale_inventory (sale_id, stock) VALUES ($1, $2)",
                    sale.id,
                    sale.stock,
                )
        except asyncpg.UniqueViolationError:
            raise SaleConflict(f"a sale with id {sale.id!r} already exists") from None
        sale = _sale(row)
        await self.room.install(sale)
        return sale

    async def update(self, sale_id: str, body: Any) -> Sale:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM sales WHERE id = $1 FOR UPDATE", sale_id)
            if row is None:
                raise SaleNotFound(sale_id)
            current = _sale(row)
            if current.closed_at is not None:
                raise SaleConflict("the sale is closed and can no longer change")
            sale = parse_sale(body, existing=current)
            now = self.clock()
            if sale.opens_at != current.opens_at and now >= current.opens_at:
                raise ValidationError("opens_at", "cannot change once the sale has opened")
            if sale.opens_at != current.opens_at and sale.opens_at <= now:
                raise ValidationError("opens_at", "a new opening time must be in the future")
            if current.seated and sale.seat_map != current.seat_map and now >= current.opens_at:
                raise ValidationError("seat_map", "cannot change once the sale has opened")
            if sale.identity_required != current.identity_required and now >= current.opens_at:
                # places taken so far are keyed one way or the other: no mixing in one line
                raise ValidationError("identity.required", "cannot change once the sale has opened")
            self._check_identity(sale)
            assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(_WRITABLE, start=1))
            row = one(
                await conn.fetchrow(
                    f"UPDATE sales SET {assignments}, updated_at = now() WHERE id = $1 RETURNING *",
                    *_params(sale),
                )
            )
            if sale.stock != current.stock:
                await self._restock(conn, current, sale.stock)
        sale = _sale(row)
        await self.room.install(sale)
        return sale

    async def _restock(self, conn: Connection, current: Sale, stock: int) -> None:
        """Change stock in both stores, inside the caller's transaction: the database refuses
        stock below held + sold, Redis refuses a cut larger than what is available."""
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE sale_inventory SET stock = $2 WHERE sale_id = $1", current.id, stock
                )
        except asyncpg.CheckViolationError:
            figures = one(
                await conn.fetchrow(
                    "SELECT held, sold FROM sale_inventory WHERE sale_id = $1", current.id
                )
            )
            raise ValidationError(
                "stock",
                f"cannot be lower than what is sold or held ({figures['sold']} sold, "
                f"{figures['held']} held)",
            ) from None
        # Redis inside the transaction, before the commit: a refusal there rolls PostgreSQL
        # back. A commit that fails after it leaves Redis ahead, and the retry finds Redis at
        # the new stock already (restock.lua is given the stock, not the change)
        outcome, *rest = await self.room.restock(current.id, stock)
        if outcome == "short":
            raise ValidationError(
                "stock", f"only {rest[0]} units are unsold and unheld; the cut is larger"
            )

    async def apply(self, sale_id: str, body: Any) -> tuple[Sale, bool]:
        """Create the sale, or update it to match `body`; returns (sale, created)."""
        body = dict(body) if isinstance(body, dict) else body
        if isinstance(body, dict):
            body.setdefault("id", sale_id)
            if body["id"] != sale_id:
                raise ValidationError("id", "must match the sale id in the path")
        try:
            await self.get(sale_id)
        except SaleNotFound:
            try:
                return await self.create(body), True
            except SaleConflict:  # created concurrently: fall through to an update
                pass
        return await self.update(sale_id, body), False

    async def close(self, sale_id: str) -> Sale:
        row = await self.pool.fetchrow(
            "UPDATE sales SET closed_at = coalesce(closed_at, now()), updated_at = now()"
            " WHERE id = $1 RETURNING *",
            sale_id,
        )
        if row is None:
            raise SaleNotFound(sale_id)
        sale = _sale(row)
        await self.room.install(sale)
        return sale

    async def ensure_room(self, sale_id: str) -> Sale:
        """(Re)install a sale's room from PostgreSQL, e.g. after Redis lost it."""
        sale = await self.get(sale_id)
        await self.room.install(sale)
        return sale
