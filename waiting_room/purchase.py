"""Buying: hold stock, pay, cancel, and see your orders.

The hold is one atomic Redis script (admission, limit, availability, seats, the hold and the
stream entry together). Payment confirms in PostgreSQL before the shopper hears "confirmed",
so a confirmed order is always durable, and the database may still refuse it (stock that
Redis wrongly believed existed): then the payment is refunded and the order ends `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.exceptions import ResponseError

from flashsale.waiting_room import ledger
from flashsale.waiting_room.autopipeline import Arg
from flashsale.waiting_room.db import UNAVAILABLE
from flashsale.waiting_room.keys import SaleKeys
from flashsale.waiting_room.ledger import HoldRecord, Release
from flashsale.waiting_room.payments import (
    GuardedProvider,
    Outcome,
    PaymentStatus,
    ProviderError,
    ProviderUnavailable,
)
from flashsale.waiting_room.redis_client import RedisClient, text, text_map, texts
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.seating import Layout
from flashsale.waiting_room.stock import PERSISTER_GROUP, Stock
from flashsale.waiting_room.tokens import Claims

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
# while the provider is failing a hold is kept at least this long after a refused attempt
HOLD_GRACE_MS = 60_000
# a payment taken while PostgreSQL cannot confirm it: the shopper is asked to come back then
CONFIRM_RETRY_S = 2.0
# how long a shopper's list of orders waits for PostgreSQL before it is Redis's alone
ORDERS_READ_S = 2.0
# a paid hold waits at most this long for a live persister to write it before confirming
PERSIST_WAIT_S = 5.0
# a persister that was handed entries this recently is live (Redis < 7.2 counts a consumer's
# idle time from its last delivery; the persister's own default for a dead consumer is 15 s)
PERSISTER_ALIVE_MS = 15_000


class NotPersistedYet(TimeoutError):
    """A live persister has not yet written a paid hold to PostgreSQL; confirming it now would
    record it ahead of the releases before it in the stream. An outage, as far as the payment
    is concerned (a TimeoutError, so among db.UNAVAILABLE): confirmed later."""


class Refusal(enum.Enum):
    """What kind of refusal a purchase met; the API chooses the HTTP status for each."""

    INVALID = "invalid"  # the request cannot be carried out as asked
    FORBIDDEN = "forbidden"  # the shopper may not buy now (no active admission)
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the sale's or the order's state does not allow it now
    GONE = "gone"  # it has ended for good (an expired hold, a released order)
    DECLINED = "declined"  # the payment provider said no
    UNAVAILABLE = "unavailable"  # try again later (Retry-After)


class PurchaseRefused(Exception):
    """The purchase cannot go ahead; `code` is stable for clients, `kind` says what sort of
    refusal it is."""

    def __init__(
        self,
        kind: Refusal,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        order: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.order = order
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:
        # an exception pickles as its class and `args` (here the message alone); a refusal
        # raised in a worker process (multiprocessing) must arrive whole
        return (type(self), (self.kind, self.code, self.message), self.__dict__)


@dataclass(frozen=True)
class Held:
    order: dict[str, Any]
    created: bool


def _phantom(reason: str) -> bool:
    """Whether a refusal means the units never existed (stock or a seat the database knows
    is gone), rather than the shopper's own limit or key: only then do they not return."""
    return reason in (
        ledger.REFUSALS["inventory_never_oversold"],
        ledger.REFUSALS["order_seats_sold_once"],
    )


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def requested_units(quantity: int | None, seats: list[int] | None) -> int:
    """How many units a hold asks for: its seats when it names them, else its quantity (1)."""
    if seats is not None:
        return len(seats)
    return 1 if quantity is None else quantity


def request_fingerprint(sale_id: str, visitor: str, quantity: int, seats: list[int] | None) -> str:
    """What an Idempotency-Key is bound to: the request as parsed, in one canonical spelling
    (seat ids in order, whether they were named by id or by section/row/seat, in any order), so
    a retry matches however its JSON was written and a different request never does."""
    canonical = json.dumps(
        [sale_id, visitor, quantity, None if seats is None else sorted(seats)],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def confirmation_pending() -> PurchaseRefused:
    """A payment that went through and that PostgreSQL cannot confirm yet: the shopper is
    asked to come back (the retry, or the expiry sweep, confirms it on that very charge)."""
    return PurchaseRefused(
        Refusal.UNAVAILABLE,
        "confirmation_pending",
        "the payment went through but the order cannot be confirmed right now; it will be: "
        "ask again shortly",
        retry_after=CONFIRM_RETRY_S,
    )


def key_reused() -> PurchaseRefused:
    return PurchaseRefused(
        Refusal.INVALID,
        "idempotency_key_reused",
        "this Idempotency-Key was first sent with a different request; "
        "send a new key for a new request",
        field="Idempotency-Key",
    )


def layout_of(sale: Sale) -> Layout:
    """The seat layout of a seated sale, built once per version of its seat map."""
    return _layouts(sale.id, sale.updated_at, sale.seat_map)


_LAYOUTS: dict[tuple[str, datetime | None], Layout] = {}


def _layouts(sale_id: str, version: datetime | None, seat_map: dict[str, Any] | None) -> Layout:
    key = (sale_id, version)
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = Layout.from_seat_map(seat_map or {"sections": []})
    return layout


def label_for(sale: Sale) -> Callable[[int], str]:
    if not sale.seated:
        return str
    return layout_of(sale).label


class Purchases:
    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        room: WaitingRoom,
        stock: Stock,
        payments: GuardedProvider,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.room = room
        self.stock = stock
        self.payments = payments
        self.clock = clock

    def keys(self, sale_id: str) -> SaleKeys:
        return self.room.keys(sale_id)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- hold ------------------------------------------------------------------------------

    async def hold(
        self,
        sale: Sale,
        admission: Claims,
        *,
        quantity: int | None = None,
        seats: list[int] | None = None,
        idempotency_key: str | None = None,
    ) -> Held:
        """Reserve stock for an admitted shopper, in one script call. A party on a seated sale
        is seated by the script itself, on the seat map as it is at that instant: together
        whenever a row has room for it, and never refused while seats are free. A retried
        request with the same Idempotency-Key returns the first hold; the same key sent with
        another request is refused (`idempotency_key_reused`)."""
        if seats is not None:
            if not sale.seated:
                raise PurchaseRefused(
                    Refusal.INVALID,
                    "invalid",
                    "this sale sells quantities, not seats",
                    field="seats",
                )
            layout = layout_of(sale)
            if any(s < 0 or s >= layout.size for s in seats) or len(set(seats)) != len(seats):
                raise PurchaseRefused(
                    Refusal.INVALID, "invalid", "unknown or repeated seat ids", field="seats"
                )
        quantity = requested_units(quantity, seats)
        if quantity < 1:
            raise PurchaseRefused(
                Refusal.INVALID, "invalid", "quantity must be at least 1", field="quantity"
            )
        fingerprint = (
            request_fingerprint(sale.id, admission.visitor, quantity, seats)
            if idempotency_key
            else ""
        )
        result = await self._hold_script(
            sale, admission, quantity, seats, idempotency_key, fingerprint
        )
        return await self._held(sale, admission, result, quantity)

    async def _hold_script(
        self,
        sale: Sale,
        admission: Claims,
        quantity: int,
        seats: list[int] | None,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> list[Any]:
        keys = self.keys(sale.id)
        visitor = admission.visitor
        digest = idempotency_digest(idempotency_key) if idempotency_key else "none"
        script_keys = [
            keys.meta,
            keys.active,
            keys.inventory,
            keys.seats,
            keys.holds,
            keys.hold(order_id := str(uuid.uuid4())),
            keys.idempotency(visitor, digest),
            keys.shopper_units(visitor),
            keys.shopper_orders(visitor),
            keys.orders_stream,
        ]
        args: list[Arg] = [
            self.now_ms(),
            admission.index,
            visitor,
            order_id,
            quantity,
            sale.hold_seconds * 1000,
            sale.per_shopper_limit,
            sale.price_cents * quantity,
            idempotency_key or "",
            IDEMPOTENCY_TTL_MS,
            sale.id,
            fingerprint,
            ",".join(map(str, seats)) if seats is not None else "",
            layout_of(sale).rows_argument if sale.seated and seats is None else "",
        ]
        for _ in range(2):
            result: list[Any] = await self.room.scripts.hold(keys=script_keys, args=args)
            status = result[0]
            if status == "no_sale":
                await self.room.install(sale)
            elif status == "not_warm":
                await self.stock.prewarm(sale)
            else:
                return result
        return result

    async def _held(self, sale: Sale, admission: Claims, result: list[Any], quantity: int) -> Held:
        status = result[0]
        if status == "ok":
            # the script's answer (id, expiry, seats) and the request make up the whole new
            # hold, as its hash holds it: no second round trip to read it back
            return Held(
                self._present(
                    sale,
                    {
                        "id": result[1],
                        "status": "held",
                        "qty": quantity,
                        "seats": result[3],
                        "amount": sale.price_cents * quantity,
                        "expires_ms": result[2],
                    },
                ),
                created=True,
            )
        if status == "existing":
            order = await self.order(sale, admission.visitor, result[1])
            return Held(order, created=False)
        if status == "key_reused":
            raise key_reused()
        refusals = {
            "closed": (Refusal.CONFLICT, "closed", "the sale has closed"),
            "not_admitted": (
                Refusal.FORBIDDEN,
                "not_admitted",
                "your admission is not active: it expired, was used, or was never "
                "granted; rejoin the waiting room",
            ),
            "not_warm": (Refusal.UNAVAILABLE, "not_ready", "the sale's stock is being prepared"),
            "sold_out": (Refusal.CONFLICT, "sold_out", "everything has been sold"),
            "limit": (Refusal.CONFLICT, "limit_reached", "that would exceed the per-shopper limit"),
            "insufficient": (
                Refusal.CONFLICT,
                "insufficient_stock",
                "not enough stock left for that",
            ),
            "seats_taken": (
                Refusal.CONFLICT,
                "seats_taken",
                "one of those seats is no longer free",
            ),
        }
        kind, code, message = refusals.get(status, (Refusal.CONFLICT, status, status))
        extra: dict[str, Any] = {}
        if status == "limit":
            extra["remaining"] = int(result[1])
        if status == "insufficient":
            extra["available"] = int(result[1])
        raise PurchaseRefused(
            kind, code, message, retry_after=2 if status == "not_warm" else None, **extra
        )

    # -- reading orders --------------------------------------------------------------------

    def _present(self, sale: Sale, fields: dict[str, Any]) -> dict[str, Any]:
        seats = [int(s) for s in str(fields.get("seats") or "").split(",") if s]
        layout = layout_of(sale) if sale.seated else None
        expires = int(fields.get("expires_ms") or 0)
        return {
            "id": fields["id"],
            "sale": sale.id,
            "status": fields["status"],
            "quantity": int(fields["qty"]),
            "seats": [layout.describe(s) for s in seats] if layout else [],
            "amount_cents": int(fields.get("amount") or 0),
            "currency": sale.currency,
            "hold_expires_at": datetime.fromtimestamp(expires / 1000, UTC).isoformat()
            if expires
            else None,
            "reason": fields.get("reason") or None,
        }

    async def _from_db(
        self, sale: Sale, order_ids: list[str] | None, visitor: str
    ) -> dict[str, dict[str, Any]]:
        query = """
            SELECT o.id, o.status, o.quantity, o.reason, o.amount_cents, o.hold_expires_at,
                   o.queue_index, o.visitor,
                   coalesce(array_agg(s.seat ORDER BY s.seat)
                            FILTER (WHERE s.seat IS NOT NULL), '{}') AS seats
            FROM orders o LEFT JOIN order_seats s ON s.order_id = o.id
            WHERE o.sale_id = $1 AND o.visitor = $2
        """
        args: list[Any] = [sale.id, visitor]
        if order_ids is not None:
            query += " AND o.id = ANY($3::uuid[])"
            args.append(order_ids)
        rows = await self.pool.fetch(query + " GROUP BY o.id ORDER BY o.created_at", *args)
        found = {}
        for r in rows:
            found[str(r["id"])] = self._present(
                sale,
                {
                    "id": str(r["id"]),
                    "status": r["status"],
                    "qty": r["quantity"],
                    "seats": ",".join(map(str, r["seats"])),
                    "amount": r["amount_cents"],
                    "expires_ms": int(r["hold_expires_at"].timestamp() * 1000),
                    "reason": r["reason"],
                },
            )
        return found

    async def _hold_fields(self, sale_id: str, order_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(self.keys(sale_id).hold(order_id)))

    async def replayed(
        self,
        sale: Sale,
        visitor: str,
        idempotency_key: str,
        *,
        quantity: int | None = None,
        seats: list[int] | None = None,
    ) -> dict[str, Any] | None:
        """The order a hold with this Idempotency-Key made, if one did (for a retry whose
        admission has ended since: the hold it made still stands), provided the retry is the
        same request; the key sent with another request is refused. Redis's record is asked
        first, then PostgreSQL's, which outlives it."""
        fingerprint = request_fingerprint(sale.id, visitor, requested_units(quantity, seats), seats)
        record = await self.redis.get(
            self.keys(sale.id).idempotency(visitor, idempotency_digest(idempotency_key))
        )
        if record is not None:
            order_id, _, stored = text(record).partition(":")
        else:
            row = await self.pool.fetchrow(
                "SELECT id, idempotency_fingerprint FROM orders"
                " WHERE sale_id = $1 AND visitor = $2 AND idempotency_key = $3",
                sale.id,
                visitor,
                idempotency_key,
            )
            if row is None:
                return None
            order_id, stored = str(row["id"]), row["idempotency_fingerprint"] or ""
        if stored and stored != fingerprint:
            raise key_reused()
        return await self.order(sale, visitor, order_id)

    async def order(self, sale: Sale, visitor: str, order_id: str) -> dict[str, Any]:
        """One of the shopper's orders; 404 for anyone else's."""
        fields = await self._hold_fields(sale.id, order_id)
        if fields and fields.get("visitor") == visitor:
            return self._present(sale, fields)
        try:
            uuid.UUID(order_id)
        except ValueError:
            raise PurchaseRefused(Refusal.NOT_FOUND, "unknown_order", "no such order") from None
        found = await self._from_db(sale, [order_id], visitor)
        if order_id not in found:
            raise PurchaseRefused(Refusal.NOT_FOUND, "unknown_order", "no such order")
        return found[order_id]

    async def orders(self, sale: Sale, visitor: str) -> list[dict[str, Any]]:
        """The shopper's orders, oldest first: PostgreSQL's record, overlaid with Redis's
        fresher view of holds the persister has not written yet. With PostgreSQL down or
        stalled (no answer within ORDERS_READ_S), Redis's view alone: it holds every order
        made since the sale was loaded there, so the shopper's page goes on working."""
        try:
            found = await asyncio.wait_for(self._from_db(sale, None, visitor), ORDERS_READ_S)
        except UNAVAILABLE:
            found = {}
        ids = texts(await self.redis.lrange(self.keys(sale.id).shopper_orders(visitor), 0, -1))
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for order_id in ids:
                    pipe.hgetall(self.keys(sale.id).hold(order_id))
                for order_id, fields in zip(ids, await pipe.execute(), strict=True):
                    fields = text_map(fields)
                    if fields and fields.get("visitor") == visitor:
                        found[order_id] = self._present(sale, fields)
        return list(found.values())

    # -- pay, cancel -----------------------------------------------------------------------

    async def pay(self, sale: Sale, visitor: str, order_id: str, token: str) -> dict[str, Any]:
        fields = await self._hold_fields(sale.id, order_id)
        if not fields or fields.get("visitor") != visitor:
            order = await self.order(sale, visitor, order_id)  # 404 unless PostgreSQL has it
            return self._settled(order)
        status = fields["status"]
        if status != "held":
            return self._settled(self._present(sale, fields))
        keys = self.keys(sale.id)
        began = await self.room.scripts.pay(
            keys=[keys.hold(order_id), keys.holds], args=[self.now_ms(), "begin", 0]
        )
        if began[0] == "expired":
            if fields.get("pay_attempted") == "1":
                # an earlier attempt may have been charged (the retry of a payment answered
                # `confirmation_pending`, say): never "expired" for a payment that went through
                return await self._paid_late(sale, order_id, fields)
            raise PurchaseRefused(Refusal.GONE, "hold_expired", "the hold expired before payment")
        if began[0] != "ok":
            return self._settled(await self.order(sale, visitor, order_id))
        try:
            return await self._charge(sale, visitor, order_id, fields, token)
        except ProviderError as exc:
            retry = (
                exc.retry_after
                if isinstance(exc, ProviderUnavailable)
                else max(1.0, self.payments.breaker.retry_after())
            )
            await self._abort_payment(sale, order_id, int(retry * 1000) + HOLD_GRACE_MS)
            raise PurchaseRefused(
                Refusal.UNAVAILABLE,
                "payment_unavailable",
                "the payment provider is not answering; your hold is kept, try again shortly",
                retry_after=retry,
            ) from exc
        except PurchaseRefused:
            raise  # declined or failed: the order has ended, nothing is left paying
        except BaseException:
            # anything else (the database failing, the request cancelled) leaves the outcome
            # unknown: the hold goes back to held rather than stay `paying` until it expires,
            # so a retry can finish it (the provider answers a repeated charge with the first
            # outcome). Its expiry is not pushed (a shopper who keeps cancelling payments must
            # not keep the stock): one that passes meanwhile is settled by the sweeper, which
            # asks the provider whether it was paid before releasing anything
            await asyncio.shield(self._abort_payment(sale, order_id, 0))
            raise

    async def _charge(
        self, sale: Sale, visitor: str, order_id: str, fields: dict[str, str], token: str
    ) -> dict[str, Any]:
        charge = await self.payments.charge(
            order_id, int(fields.get("amount") or 0), sale.currency, token
        )
        if charge.outcome is Outcome.DECLINED:
            await self._release(
                sale,
                order_id,
                status="released",
                reason=f"payment declined: {charge.reason}",
                leaving="paying",
                counter="held",
                emit=True,
            )
            raise PurchaseRefused(
                Refusal.DECLINED,
                "payment_declined",
                "the payment was declined; the hold was released",
                order=await self.order(sale, visitor, order_id),
            )
        try:
            settled = await self.settle_paid(sale, HoldRecord.from_fields(fields), charge.reference)
        except UNAVAILABLE as exc:
            # charged, not yet confirmed: held again, so the shopper's retry confirms it on
            # this very charge (or the expiry sweep does, asking the provider first)
            await asyncio.shield(self._abort_payment(sale, order_id, 0))
            raise confirmation_pending() from exc
        return self._settled(settled)

    async def _paid_late(self, sale: Sale, order_id: str, fields: dict[str, str]) -> dict[str, Any]:
        """A payment retried after its hold expired: confirmed if the provider says an
        earlier attempt was paid (as the expiry sweep would), else the hold has expired."""
        try:
            paid = await self.payments.status(order_id)
        except ProviderError as exc:
            raise PurchaseRefused(
                Refusal.UNAVAILABLE,
                "payment_unavailable",
                "the payment provider is not answering; try again shortly",
                retry_after=max(1.0, self.payments.breaker.retry_after()),
            ) from exc
        if paid is not PaymentStatus.PAID:
            raise PurchaseRefused(Refusal.GONE, "hold_expired", "the hold expired before payment")
        try:
            settled = await self.settle_paid(
                sale, HoldRecord.from_fields(fields), f"late-{order_id}"
            )
        except UNAVAILABLE as exc:
            raise confirmation_pending() from exc
        return self._settled(settled)

    async def _abort_payment(self, sale: Sale, order_id: str, keep_ms: int) -> None:
        """A payment that did not finish: `paying` back to `held` (pay.lua; a no-op when the
        order has moved on), kept at least `keep_ms` from now."""
        keys = self.keys(sale.id)
        await self.room.scripts.pay(
            keys=[keys.hold(order_id), keys.holds], args=[self.now_ms(), "abort", keep_ms]
        )

    def _settled(self, order: dict[str, Any]) -> dict[str, Any]:
        """An order the pay call found already past payment: the answer for a retry."""
        status = order["status"]
        if status == "confirmed":
            return order
        if status == "paying":
            raise PurchaseRefused(
                Refusal.CONFLICT,
                "payment_in_progress",
                "a payment for this order is under way",
                retry_after=2,
                order=order,
            )
        if status == "failed":
            raise PurchaseRefused(
                Refusal.CONFLICT, "order_failed", order.get("reason") or "order failed", order=order
            )
        raise PurchaseRefused(
            Refusal.GONE, f"order_{status}", f"the order is {status}", order=order
        )

    async def settle_paid(self, sale: Sale, hold: HoldRecord, reference: str) -> dict[str, Any]:
        """Confirm a paid hold in PostgreSQL first, then in Redis; refund if the database
        refuses it."""
        await self._persisted(sale, hold.order_id)
        async with self.pool.acquire() as conn:
            status, reason = await ledger.confirm_order(
                conn, hold, reference, currency=sale.currency, label=label_for(sale)
            )
        keys = self.keys(sale.id)
        if status == "confirmed":
            await self.room.scripts.confirm(
                keys=[keys.inventory, keys.holds, keys.hold(hold.order_id), keys.active],
                args=[self.now_ms(), reference],
            )
            return await self.order(sale, hold.visitor, hold.order_id)
        # the database refused (or had already ended) the order: give the money back
        await self.payments.refund(hold.order_id)
        reason = reason or "refused by the database"
        await self._release(
            sale,
            hold.order_id,
            status=status if status != "held" else "failed",
            reason=reason,
            leaving="held,paying",
            counter="held",
            emit=False,
            restock=not _phantom(reason),
        )
        order = await self.order(sale, hold.visitor, hold.order_id)
        raise PurchaseRefused(
            Refusal.CONFLICT,
            "order_failed",
            f"{order.get('reason') or 'the order failed'}; the payment was refunded",
            order=order,
        )

    async def _persisted(self, sale: Sale, order_id: str) -> None:
        """Let a live persister write the hold before it is confirmed. The persister writes
        the stream in order, so once the hold is in PostgreSQL every release before it is too.
        Recorded here instead (confirm_order does it when the hold is missing), it would jump
        the releases still in the stream and count against units or a per-shopper limit they
        have given back: PostgreSQL would refuse a valid order, and Redis would drop its units.
        Waits at most PERSIST_WAIT_S, and not at all when no persister drains the stream. A
        live persister still behind after that (stalled, or one restarted with a backlog)
        raises NotPersistedYet: the charge stands and the order is confirmed later, by the
        shopper's retry or the expiry sweep, in stream order (seen in `make test`'s short
        chaos run, `persister-kill9-backlog`: a valid order refused and its units lost)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PERSIST_WAIT_S
        stream = self.keys(sale.id).orders_stream
        while not await self.pool.fetchval("SELECT 1 FROM orders WHERE id = $1", order_id):
            try:
                consumers = await self.redis.xinfo_consumers(stream, PERSISTER_GROUP)
            except ResponseError:  # no stream or no group: nobody drains it
                return
            if not any(int(c.get("idle", 0)) < PERSISTER_ALIVE_MS for c in consumers):
                return
            if loop.time() >= deadline:
                raise NotPersistedYet(f"hold {order_id} not yet written by the persister")
            await asyncio.sleep(0.05)

    async def cancel(self, sale: Sale, visitor: str, order_id: str) -> dict[str, Any]:
        """Cancel a hold (stock returns) or a confirmed order: recorded in PostgreSQL first
        (`cancelling`), then refunded, then its stock returns (`finish_cancel`). A retry, or
        the persister's sweep, finishes a cancellation that was interrupted."""
        order = await self.order(sale, visitor, order_id)
        if order["status"] == "held":
            # the admission stays active: a shopper who cancels a hold (to choose other seats,
            # or while holding others) may still buy within the limit; leaving ends it
            outcome = await self._release(
                sale,
                order_id,
                status="cancelled",
                reason="cancelled by the shopper",
                leaving="held",
                counter="held",
                emit=True,
            )
            order = await self.order(sale, visitor, order_id)
            if outcome == "ok":
                return order
            # it moved on between the read and the release (a payment began, it expired)
        if order["status"] == "paying":
            raise PurchaseRefused(
                Refusal.CONFLICT,
                "payment_in_progress",
                "a payment for this order is under way; it cannot be cancelled now",
                retry_after=2,
                order=order,
            )
        if order["status"] not in ("confirmed", "cancelling"):
            raise PurchaseRefused(
                Refusal.CONFLICT,
                f"order_{order['status']}",
                f"an order that is {order['status']} cannot be cancelled",
                order=order,
            )
        # the intent first: nothing is refunded that PostgreSQL does not know is being
        # cancelled (down now: a 503, and nothing has happened)
        async with self.pool.acquire() as conn:
            recorded = await ledger.begin_cancel(conn, sale.id, order_id)
        if recorded not in ("cancelling", "cancelled"):
            raise PurchaseRefused(
                Refusal.CONFLICT,
                f"order_{recorded}",
                f"an order that is {recorded} cannot be cancelled",
                order=order,
            )
        await self.finish_cancel(sale, order_id)
        return await self.order(sale, visitor, order_id)

    async def finish_cancel(self, sale: Sale, order_id: str) -> None:
        """The rest of a cancellation PostgreSQL has recorded: refund, the stock back in
        Redis, the order `cancelled` in PostgreSQL. Every step is idempotent (the provider
        refunds an order once; the release acts only on a confirmed order; PostgreSQL ends
        only a `cancelling` one), so it is safe to run again after any interruption. The
        release also goes to the stream, so the persister ends the order in PostgreSQL in
        stream order if this process cannot: before any later hold takes its units."""
        try:
            await self.payments.refund(order_id)
        except ProviderError as exc:
            retry = getattr(exc, "retry_after", None) or 5.0
            raise PurchaseRefused(
                Refusal.UNAVAILABLE,
                "refund_pending",
                "the cancellation is recorded but the refund could not be made now; it will "
                "be: ask again shortly",
                retry_after=retry,
            ) from exc
        await self._release(
            sale,
            order_id,
            status="cancelled",
            reason=ledger.CANCELLED,
            leaving="confirmed",
            counter="sold",
            emit=True,
        )
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await ledger.lock_inventory(conn, sale.id)
                await ledger.release_orders(
                    conn, [Release(order_id, "cancelled", ledger.CANCELLED, "cancelling")]
                )
        except UNAVAILABLE:
            # refunded and released: what is left is the stream's release, which the
            # persister writes once PostgreSQL answers (and the sweep, if Redis lost it)
            log.warning("cancellation left to the persister", extra={"order": order_id})

    async def mark_failed(self, sale: Sale, order_id: str, reason: str) -> None:
        """PostgreSQL refused a hold: end it in Redis as `failed`. Refused for stock or seats,
        its units do not return: Redis believed in stock that does not exist. Refused for
        the shopper's own reasons (limit, reused key), the stock is real and returns."""
        await self._release(
            sale,
            order_id,
            status="failed",
            reason=reason,
            leaving="held,paying",
            counter="held",
            emit=False,
            restock=not _phantom(reason),
        )

    async def _release(
        self,
        sale: Sale,
        order_id: str,
        *,
        status: str,
        reason: str,
        leaving: str,
        counter: str,
        emit: bool,
        restock: bool = True,
    ) -> str:
        keys = self.keys(sale.id)
        visitor = text(await self.redis.hget(keys.hold(order_id), "visitor") or "")
        result = await self.room.scripts.release(
            keys=[
                keys.meta,
                keys.inventory,
                keys.seats,
                keys.holds,
                keys.hold(order_id),
                keys.shopper_units(visitor),
                keys.orders_stream,
            ],
            args=[
                self.now_ms(),
                status,
                reason,
                leaving,
                counter,
                1 if restock else 0,
                1 if emit else 0,
                sale.id,
            ],
        )
        self.room.forget(sale.id)
        return text(result[0])

    # -- expiry ----------------------------------------------------------------------------

    async def sweep(self, sale: Sale, *, limit: int = 200) -> dict[str, int]:
        """The whole sweep: `expire`, then `settle` (the persister runs them as tasks of their
        own, so the first never waits on the second's PostgreSQL or provider)."""
        counts = await self.expire(sale, limit=limit)
        for name, n in (await self.settle(sale, limit=limit)).items():
            counts[name] = counts.get(name, 0) + n
        return counts

    async def _due(self, sale: Sale, limit: int) -> list[tuple[str, dict[str, str]]]:
        """Open holds past their expiry, with their fields; entries of holds that have
        ended meanwhile are dropped from the set."""
        keys = self.keys(sale.id)
        due = texts(
            await self.redis.zrangebyscore(keys.holds, "-inf", self.now_ms(), start=0, num=limit)
        )
        found = []
        for order_id in due:
            fields = await self._hold_fields(sale.id, order_id)
            if fields.get("status") not in ("held", "paying"):
                await self.redis.zrem(keys.holds, order_id)
                continue
            found.append((order_id, fields))
        return found

    async def _expire_one(self, sale: Sale, order_id: str) -> bool:
        outcome = await self._release(
            sale,
            order_id,
            status="released",
            reason="hold expired",
            leaving="held,paying",
            counter="held",
            emit=True,
        )
        return outcome == "ok"

    async def expire(self, sale: Sale, *, limit: int = 200) -> dict[str, int]:
        """Release holds past their expiry that never tried to pay: Redis alone (the release
        reaches PostgreSQL through the stream), so their stock returns while PostgreSQL or the
        payment provider is down. Holds that tried to pay are `settle`'s."""
        counts = {"expired": 0}
        for order_id, fields in await self._due(sale, limit):
            if fields.get("pay_attempted") != "1" and await self._expire_one(sale, order_id):
                counts["expired"] += 1
        return counts

    async def settle(
        self, sale: Sale, *, limit: int = 200, cancelling_after_s: float | None = None
    ) -> dict[str, int]:
        """Holds past their expiry that tried to pay: confirm those the provider says were
        paid, release the others; while the provider or PostgreSQL cannot be asked they are
        kept. Then finish the cancellations an interruption left `cancelling` for longer than
        `cancelling_after_s` (default: twice the provider's timeout, so never one still under
        way)."""
        now = self.now_ms()
        counts = {"expired": 0, "confirmed": 0, "kept": 0, "cancelled": 0}
        payment_window = int(self.payments.timeout_s * 2000)
        for order_id, fields in await self._due(sale, limit):
            if fields.get("pay_attempted") != "1":
                continue
            if (
                fields["status"] == "paying"
                and now - int(fields.get("paying_since") or 0) < payment_window
            ):
                counts["kept"] += 1  # a payment is under way right now
                continue
            try:
                paid = await self.payments.status(order_id)
            except ProviderError:
                counts["kept"] += 1
                continue
            if paid is not PaymentStatus.PAID:
                counts["expired"] += await self._expire_one(sale, order_id)
                continue
            try:
                await self.settle_paid(sale, HoldRecord.from_fields(fields), f"late-{order_id}")
                counts["confirmed"] += 1
            except PurchaseRefused:
                pass  # refused by the database and refunded; nothing to release
            except NotPersistedYet:  # the persister is behind: kept for the next sweep
                counts["kept"] += 1
            except UNAVAILABLE:  # PostgreSQL: kept for the next sweep, as are the rest
                counts["kept"] += 1
                return counts
        if cancelling_after_s is None:
            cancelling_after_s = 2 * self.payments.timeout_s
        with contextlib.suppress(*UNAVAILABLE):  # PostgreSQL: the next sweep asks again
            counts["cancelled"] = await self._finish_cancellations(sale, cancelling_after_s, limit)
        return counts

    async def _finish_cancellations(self, sale: Sale, after_s: float, limit: int) -> int:
        """Finish cancellations recorded in PostgreSQL that nobody finished (the process that
        began one died, or the provider or PostgreSQL failed half-way); how many ended."""
        rows = await self.pool.fetch(
            "SELECT id::text AS id FROM orders WHERE sale_id = $1 AND status = 'cancelling'"
            " AND updated_at < now() - make_interval(secs => $2) ORDER BY updated_at LIMIT $3",
            sale.id,
            after_s,
            limit,
        )
        finished = 0
        for row in rows:
            try:
                await self.finish_cancel(sale, row["id"])
            except PurchaseRefused:  # the provider cannot refund now: the next sweep retries
                continue
            finished += 1
        return finished
