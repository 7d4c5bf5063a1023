"""The persister: carries order entries from each sale's Redis Stream into PostgreSQL.

It reads through a consumer group, writes a batch in one transaction, and acknowledges only
after the commit, so a persister killed at any instant loses nothing: its unacknowledged
entries are taken over by another persister (or itself, restarted) and replayed, and the
idempotent writes make the replay harmless. An entry that can never be applied goes to the
sale's dead-letter stream with the reason, instead of blocking the ones behind it.
It also sweeps expired holds back into stock. Each sale's share of a pass runs on its own
(waiting_room/isolation.py): a sale whose Redis shard is down or slow never holds up the others'
orders and expiries.

PostgreSQL down or stalled stops the writing, nothing else: the sweep (Redis) is a task of its
own beside the drain, so holds go on expiring and their units return; the entries of a batch
that could not reach PostgreSQL stay pending, are never counted towards the dead letters (an
outage is not a poison entry, however long it lasts), and are written first once PostgreSQL
answers again, without waiting for another persister to claim them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from flashsale.waiting_room import ledger
from flashsale.waiting_room.db import UNAVAILABLE
from flashsale.waiting_room.isolation import PerSale
from flashsale.waiting_room.ledger import HoldRecord, MalformedEntry, Release
from flashsale.waiting_room.purchase import Purchases, label_for
from flashsale.waiting_room.redis_client import RedisClient, text, texts
from flashsale.waiting_room.refreshed import Refreshed
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.stock import PERSISTER_GROUP

log = logging.getLogger(__name__)

PERSISTED = Counter(
    "flashsale_persisted_entries", "Stream entries written to PostgreSQL", ["sale", "type"]
)
DEAD = Counter("flashsale_dead_letter_entries", "Entries moved to the dead-letter stream", ["sale"])
REFUSED = Counter(
    "flashsale_refused_holds", "Holds PostgreSQL refused (they end failed)", ["sale", "reason"]
)
LAG = Gauge(
    "flashsale_persister_lag_entries",
    "Stream entries not yet written to PostgreSQL (unread + unacknowledged)",
    ["sale"],
    multiprocess_mode="max",
)
MISMATCH = Gauge(
    "flashsale_stock_mismatch",
    "1 when Redis and PostgreSQL disagree on the sale's stock (two checks in a row)",
    ["sale"],
    multiprocess_mode="max",
)
RECONCILED = Gauge(
    "flashsale_reconcile_last_run_timestamp_seconds",
    "When the persister last compared the sale's stock in Redis and PostgreSQL",
    ["sale"],
    multiprocess_mode="max",
)
EXPIRED = Counter("flashsale_holds_expired", "Holds released at expiry", ["sale"])

Entry = tuple[str, dict[str, str]]
LIVE_FOR_S = 86_400  # keep draining a sale's stream this long after it closes
BACKLOG_FACTOR = 4  # batches grow to this many times FLASHSALE_PERSISTER_BATCH in a backlog
DRAIN_SLICE_S = 1.0  # one sale's backlog is drained this long at a time
RETRY_POSTGRES_S = 1.0  # a sale whose batch could not reach PostgreSQL tries again this late


class Persister:
    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        sales: Sales,
        purchases: Purchases,
        *,
        consumer: str,
        batch: int = 500,
        claim_idle_ms: int = 15_000,
        max_deliveries: int = 5,
        sweep_interval_ms: int = 1000,
        refresh_seconds: float = 5.0,
        reconcile_every_seconds: float = 30.0,
        reconcile_confirm_seconds: float = 2.0,
        sale_timeout_seconds: float = 10.0,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.sales = sales
        self.purchases = purchases
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.sweep_interval = sweep_interval_ms / 1000
        self.refresh_seconds = refresh_seconds
        self._sales: list[Sale] = []
        # the sales to drain, re-read in the background: the sweep goes on, on the list in
        # hand, while PostgreSQL is down or stalled
        self._listing = Refreshed(self._sales_to_drain, every=refresh_seconds, what="sales")
        # sales whose last batch could not reach PostgreSQL: monotonic time of the next try
        self._unreachable: dict[str, float] = {}
        # sales whose last drain ended half-way (PostgreSQL down, or stalled past the sale's
        # timeout): what it had read is pending on this consumer, written first next time
        self._replay: set[str] = set()
        self._groups: set[str] = set()
        self._last_claim = 0.0
        self._last_sweep = 0.0
        self.reconcile_every = reconcile_every_seconds
        self.reconcile_confirm = reconcile_confirm_seconds
        self._reconcile_due: dict[str, float] = {}
        self._suspect: set[str] = set()
        self.per_sale = PerSale("persister", sale_timeout_seconds)
        # expiry (Redis) never waits behind a drain or a settling (PostgreSQL, the provider)
        self.sweeping = PerSale("persister", sale_timeout_seconds)
        self.settling = PerSale("persister", sale_timeout_seconds)

    def stream(self, sale_id: str) -> str:
        return self.purchases.keys(sale_id).orders_stream

    async def run(self, stop: asyncio.Event) -> None:
        log.info("persister started", extra={"consumer": self.consumer})
        try:
            while not stop.is_set():
                try:
                    moved = await self.step()
                except Exception:  # keep going: the next tick retries from the pending list
                    log.exception("persister tick failed")
                    moved = 0
                if not moved:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.05)
        finally:
            await self.close()
        log.info("persister stopped")

    async def close(self) -> None:
        """Cancel the sales' work still running and wait for it to end."""
        for runner in (self.per_sale, self.sweeping, self.settling):
            await runner.close()

    async def step(self) -> int:
        """One pass over every sale; returns how many entries were handled."""
        now = time.monotonic()
        self._sales = await self._listing.get()
        claim = now - self._last_claim >= self.claim_idle_ms / 3000
        sweep = now - self._last_sweep >= self.sweep_interval
        moved, _, _ = await asyncio.gather(
            self.per_sale.run(
                {
                    sale.id: functools.partial(self._sale_step, sale, now, claim)
                    for sale in self._sales
                    if now >= self._unreachable.get(sale.id, 0.0)
                }
            ),
            self.sweeping.run(
                {sale.id: functools.partial(self._sweep, sale) for sale in self._sales}
                if sweep
                else {}
            ),
            self.settling.run(
                {sale.id: functools.partial(self._settle, sale) for sale in self._sales}
                if sweep
                else {}
            ),
        )
        if claim:
            self._last_claim = now
        if sweep:
            self._last_sweep = now
        return sum(moved.values())

    async def _sale_step(self, sale: Sale, now: float, claim: bool) -> int:
        """One sale's share of a pass: its own entries left by an outage, take over, drain and
        check; entries handled."""
        moved = 0
        try:
            if sale.id in self._replay:
                moved += await self.replay(sale)
                self._replay.discard(sale.id)
                if self._unreachable.pop(sale.id, None) is not None:
                    log.info("PostgreSQL answers again; writing on", extra={"sale": sale.id})
            if claim:
                moved += await self.take_over(sale)
            moved += await self.drain(sale)
        except UNAVAILABLE as exc:
            if sale.id not in self._unreachable:
                log.warning(
                    "PostgreSQL cannot be reached; the entries stay pending",
                    extra={"sale": sale.id, "error": f"{type(exc).__name__}: {exc}"},
                )
            self._replay.add(sale.id)
            self._unreachable[sale.id] = time.monotonic() + RETRY_POSTGRES_S
            return moved
        except asyncio.CancelledError:  # past the sale's timeout (a stall), or stopping
            self._replay.add(sale.id)
            raise
        if self.reconcile_every > 0 and now >= self._reconcile_due.get(sale.id, 0.0):
            await self.check_stock(sale, now)
        return moved

    async def _sweep(self, sale: Sale) -> None:
        counts = await self.purchases.expire(sale)
        EXPIRED.labels(sale.id).inc(counts["expired"])
        await self._measure_lag(sale)

    async def _settle(self, sale: Sale) -> None:
        counts = await self.purchases.settle(sale)
        EXPIRED.labels(sale.id).inc(counts["expired"])

    async def _sales_to_drain(self) -> list[Sale]:
        return await self.sales.recent(LIVE_FOR_S)

    async def _ensure_group(self, sale: Sale) -> bool:
        """Make sure the persisters' group exists; False when there is nothing to drain: a
        closed sale whose stream is gone (its keys were removed) is not brought back empty."""
        if sale.id in self._groups:
            return True
        stream = self.stream(sale.id)
        if sale.phase(datetime.now(UTC)) == "closed" and not await self.redis.exists(stream):
            return False
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(stream, PERSISTER_GROUP, id="0", mkstream=True)
        self._groups.add(sale.id)
        return True

    async def drain(self, sale: Sale) -> int:
        """Read new entries of one sale and write them; returns how many.

        While a backlog lasts (each read comes back full) the batches grow to
        BACKLOG_FACTOR times `batch`, so the per-transaction costs are shared by more entries,
        and the next batch is read from Redis while this one is written to PostgreSQL; in
        steady state a batch stays small, and so does the time the inventory row is locked."""
        if not await self._ensure_group(sale):
            return 0
        size = self.batch
        reading: asyncio.Future[list[Entry]] | None = asyncio.ensure_future(self._read(sale, size))
        moved = 0
        deadline = time.monotonic() + DRAIN_SLICE_S  # then the other sales get their turn
        try:
            while reading is not None:
                entries = await reading
                reading = None
                if not entries:
                    break
                if len(entries) >= size:  # a backlog: read a bigger batch while writing this
                    size = min(size * 2, self.batch * BACKLOG_FACTOR)
                    if time.monotonic() < deadline:
                        reading = asyncio.ensure_future(self._read(sale, size))
                await self.apply(sale, entries)
                moved += len(entries)
            return moved
        finally:
            # on an error, what the read-ahead got stays pending in the group for take_over
            if reading is not None and not reading.done():
                reading.cancel()
            elif reading is not None and not reading.cancelled():
                reading.exception()  # retrieved: the error that ended the drain is raised

    async def replay(self, sale: Sale) -> int:
        """Write this consumer's own pending entries (a batch PostgreSQL did not take), oldest
        first; returns how many."""
        moved, after = 0, "0"
        while entries := await self._read(sale, self.batch, start=after):
            await self.apply(sale, entries)
            moved += len(entries)
            after = entries[-1][0]
        return moved

    async def _read(self, sale: Sale, count: int, start: str = ">") -> list[Entry]:
        """Entries of the sale's stream, read on the auto-pipeline: on a cluster it goes
        straight to the sale's node (no blocking read, so it holds up nothing behind it).
        `>`: new entries; an id: this consumer's own pending entries after it."""
        try:
            reply: Any = await self.purchases.room.scripts.pipeline().execute(
                "XREADGROUP",
                "GROUP",
                PERSISTER_GROUP,
                self.consumer,
                "COUNT",
                count,
                "STREAMS",
                self.stream(sale.id),
                start,
            )
        except ResponseError as exc:  # NOGROUP: the stream was removed; recreate next time
            self._groups.discard(sale.id)
            log.warning("stream read failed", extra={"sale": sale.id, "error": str(exc)})
            return []
        if not reply:
            return []
        return [
            (text(entry_id), dict(zip(texts(fields[::2]), texts(fields[1::2]), strict=True)))
            for entry_id, fields in reply[0][1]
            if fields  # a pending entry deleted from the stream since comes back empty
        ]

    async def take_over(self, sale: Sale) -> int:
        """Claim entries a silent consumer (dead, or this one before a crash) left unacked."""
        if not await self._ensure_group(sale):
            return 0
        moved = 0
        start = "0-0"
        while True:
            try:
                reply = await self.redis.xautoclaim(
                    self.stream(sale.id),
                    PERSISTER_GROUP,
                    self.consumer,
                    self.claim_idle_ms,
                    start_id=start,
                    count=self.batch,
                )
            except ResponseError as exc:  # NOGROUP: Redis lost the group; recreate it next
                self._groups.discard(sale.id)
                log.warning("stream claim failed", extra={"sale": sale.id, "error": str(exc)})
                return moved
            start, claimed = reply[0], [e for e in reply[1] if e[1]]
            if claimed:
                log.info("took over entries", extra={"sale": sale.id, "count": len(claimed)})
                await self.apply(sale, claimed)
                moved += len(claimed)
            if start == "0-0" or not claimed:
                return moved

    async def apply(self, sale: Sale, entries: list[Entry]) -> None:
        """Write a batch in one transaction, ack after commit; on failure, entry by entry."""
        holds, releases, poison = self._parse(entries)
        for entry_id, fields, reason in poison:
            await self._dead_letter(sale, entry_id, fields, reason)
        good = [e for e in entries if e[0] not in {p[0] for p in poison}]
        if not good:
            return
        try:
            await self._write(sale, holds, releases, [e[0] for e in good])
        except UNAVAILABLE:
            raise  # PostgreSQL unreachable: the batch stays pending, nothing is its fault
        except (asyncpg.PostgresError, OSError, ValueError) as exc:
            log.warning(
                "batch failed; writing entries one by one",
                extra={"sale": sale.id, "error": repr(exc)},
            )
            for entry in good:
                await self._apply_one(sale, entry)

    def _parse(
        self, entries: list[Entry]
    ) -> tuple[
        list[tuple[str, HoldRecord]],
        list[tuple[str, Release]],
        list[tuple[str, dict[str, str], str]],
    ]:
        holds, releases, poison = [], [], []
        for entry_id, fields in entries:
            kind = fields.get("type")
            try:
                if kind == "hold":
                    holds.append((entry_id, HoldRecord.from_fields(fields)))
                elif kind == "release":
                    if fields.get("status") not in ("released", "cancelled") or not fields.get(
                        "order"
                    ):
                        raise MalformedEntry("release without a valid status or order")
                    # a confirmed order's cancellation ends from PostgreSQL's `cancelling`
                    # (recorded before its refund); anything else is a hold ending
                    left = "cancelling" if fields.get("from") == "confirmed" else "held"
                    releases.append(
                        (
                            entry_id,
                            Release(
                                fields["order"], fields["status"], fields.get("reason", ""), left
                            ),
                        )
                    )
                else:
                    raise MalformedEntry(f"unknown entry type {kind!r}")
            except MalformedEntry as exc:
                poison.append((entry_id, fields, str(exc)))
        return holds, releases, poison

    async def _write(
        self,
        sale: Sale,
        holds: list[tuple[str, HoldRecord]],
        releases: list[tuple[str, Release]],
        ids: list[str],
    ) -> None:
        # in stream order: a release must land before a later hold that takes the units or
        # seats it freed, or the database refuses that hold as oversold
        at = {entry_id: n for n, entry_id in enumerate(ids)}
        steps = sorted(
            [(at[i], True, h) for i, h in holds] + [(at[i], False, r) for i, r in releases],
            key=lambda step: step[0],
        )
        refused: dict[str, str] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            await ledger.lock_inventory(conn, sale.id)
            for is_hold, run in itertools.groupby(steps, key=lambda step: step[1]):
                records = [step[2] for step in run]
                if is_hold:
                    applied = await ledger.record_holds(
                        conn,
                        [r for r in records if isinstance(r, HoldRecord)],
                        currency=sale.currency,
                        label=label_for(sale),
                    )
                    refused.update(applied.refused)
                else:
                    await ledger.release_orders(
                        conn, [r for r in records if isinstance(r, Release)]
                    )
        # committed: only now may Redis forget the entries
        for order_id, reason in refused.items():
            REFUSED.labels(sale.id, reason).inc()
            await self.purchases.mark_failed(sale, order_id, reason)
        await self.redis.xack(self.stream(sale.id), PERSISTER_GROUP, *ids)
        if holds:
            PERSISTED.labels(sale.id, "hold").inc(len(holds))
        if releases:
            PERSISTED.labels(sale.id, "release").inc(len(releases))

    async def _apply_one(self, sale: Sale, entry: Entry) -> None:
        entry_id, fields = entry
        holds, releases, _ = self._parse([entry])
        try:
            await self._write(sale, holds, releases, [entry_id])
        except UNAVAILABLE:
            raise
        except (asyncpg.PostgresError, OSError, ValueError) as exc:
            deliveries = await self._deliveries(sale, entry_id)
            if deliveries >= self.max_deliveries:
                await self._dead_letter(
                    sale, entry_id, fields, f"failed {deliveries} times: {exc!r}"
                )
            else:
                log.warning(
                    "entry failed; it stays pending for a retry",
                    extra={"sale": sale.id, "entry": entry_id, "error": repr(exc)},
                )

    async def _deliveries(self, sale: Sale, entry_id: str) -> int:
        pending = await self.redis.xpending_range(
            self.stream(sale.id), PERSISTER_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def _dead_letter(
        self, sale: Sale, entry_id: str, fields: dict[str, Any], reason: str
    ) -> None:
        keys = self.purchases.keys(sale.id)
        letter: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
        letter.update({"dead_reason": reason, "dead_entry": entry_id})
        await self.redis.xadd(keys.dead_letters, letter)
        await self.redis.xack(self.stream(sale.id), PERSISTER_GROUP, entry_id)
        DEAD.labels(sale.id).inc()
        log.error(
            "entry moved to the dead-letter stream",
            extra={"sale": sale.id, "entry": entry_id, "reason": reason},
        )

    async def check_stock(self, sale: Sale, now: float) -> None:
        """`Stock.reconcile` for a warm (or open) sale, exported as flashsale_stock_mismatch.

        A payment confirmed between the check's Redis and PostgreSQL reads looks like a
        difference, so a difference only counts when the check repeated shortly after finds
        one again."""
        self._reconcile_due[sale.id] = now + self.reconcile_every
        stock = self.purchases.stock
        try:
            if not (sale.phase(datetime.now(UTC)) == "open" or await stock.is_warm(sale.id)):
                return  # not loaded yet (or unloaded after the sale): nothing to compare
            report = await stock.reconcile(sale)
        except Exception:  # never let the check hold up the orders
            log.warning("stock check failed", extra={"sale": sale.id}, exc_info=True)
            return
        RECONCILED.labels(sale.id).set_to_current_time()
        if report.ok:
            self._suspect.discard(sale.id)
            MISMATCH.labels(sale.id).set(0)
        elif sale.id in self._suspect:
            MISMATCH.labels(sale.id).set(1)
            log.error(
                "stock differs between Redis and PostgreSQL",
                extra={"sale": sale.id, "differences": report.differences},
            )
        else:
            self._suspect.add(sale.id)
            self._reconcile_due[sale.id] = now + self.reconcile_confirm

    async def _measure_lag(self, sale: Sale) -> None:
        backlog = await self.purchases.stock.stream_backlog(sale.id)
        LAG.labels(sale.id).set(backlog["lag"] + backlog["pending"])
