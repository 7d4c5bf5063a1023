"""The admitter: lets the next batch of every live sale in when it is due.

Any number of admitters may run; the admission script is atomic and compares the frontier it
was given, so concurrent admitters never admit beyond the limits, they only lose races. Each
sale's share of a tick runs on its own (waiting_room/isolation.py): a sale whose Redis shard is
down or slow never holds up admission for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge

from flashsale.waiting_room.isolation import PerSale
from flashsale.waiting_room.pow import Pace, difficulty
from flashsale.waiting_room.refreshed import Refreshed
from flashsale.waiting_room.room import Counters, NoSuchRoom, WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.stock import Stock

log = logging.getLogger(__name__)

ADMITTED = Counter("flashsale_admitted", "Shoppers admitted from the waiting room", ["sale"])
SKIPPED = Counter("flashsale_skipped", "Places skipped because the waiter left", ["sale"])
LAST_BATCH = Gauge(
    "flashsale_admitter_last_batch_timestamp_seconds",
    "When the admitter last let a batch in",
    ["sale"],
    multiprocess_mode="max",
)

# Per-sale figures, exported by the admitters only (they read every live room anyway), so a
# dashboard takes `max by (sale)` over admitter pods instead of a sum multiplied by API pods.
# multiprocess_mode: the image sets PROMETHEUS_MULTIPROC_DIR for every role.
WAITING = Gauge(
    "flashsale_waiting", "Shoppers in line, not yet admitted", ["sale"], multiprocess_mode="max"
)
ACTIVE = Gauge(
    "flashsale_active_shoppers",
    "Admitted shoppers whose admission is current",
    ["sale"],
    multiprocess_mode="max",
)
ACTIVE_LIMIT = Gauge(
    "flashsale_active_shoppers_limit", "The sale's max_active", ["sale"], multiprocess_mode="max"
)
HOLDS_OPEN = Gauge(
    "flashsale_holds_open",
    "Holds not yet paid, released or expired",
    ["sale"],
    multiprocess_mode="max",
)
AVAILABLE = Gauge(
    "flashsale_stock_available_units",
    "Units left to hold (Redis)",
    ["sale"],
    multiprocess_mode="max",
)
HELD = Gauge(
    "flashsale_stock_held_units", "Units in unpaid holds (Redis)", ["sale"], multiprocess_mode="max"
)
SOLD = Gauge("flashsale_stock_sold_units", "Units sold (Redis)", ["sale"], multiprocess_mode="max")
SALE_OPEN = Gauge(
    "flashsale_sale_open",
    "1 from the opening until the sale closes",
    ["sale"],
    multiprocess_mode="max",
)
SOLD_OUT = Gauge(
    "flashsale_sale_sold_out", "1 while nothing is left to hold", ["sale"], multiprocess_mode="max"
)
OPENS_AT = Gauge(
    "flashsale_sale_opens_timestamp_seconds",
    "When the sale opens",
    ["sale"],
    multiprocess_mode="max",
)

POW_DIFFICULTY = Gauge(
    "flashsale_pow_difficulty_bits",
    "Proof-of-work difficulty a new anonymous place costs now (0: none)",
    ["sale"],
    multiprocess_mode="max",
)


class Admitter:
    def __init__(
        self,
        sales: Sales,
        room: WaitingRoom,
        stock: Stock,
        *,
        tick_ms: int,
        refresh_seconds: float,
        prewarm_lead_seconds: int = 300,
        gauges_every_seconds: float = 1.0,
        sale_timeout_seconds: float = 10.0,
    ) -> None:
        self.sales = sales
        self.room = room
        self.stock = stock
        self.prewarm_lead = prewarm_lead_seconds
        self._warm: set[str] = set()
        self.tick = tick_ms / 1000
        self.refresh_seconds = refresh_seconds
        self._live: list[Sale] = []
        # the live sales, re-read from PostgreSQL in the background: admission needs only
        # Redis and goes on, on the list in hand, while PostgreSQL is down or stalled
        self._listing = Refreshed(self.sales.live, every=refresh_seconds, what="live sales")
        self.gauges_every = gauges_every_seconds
        self._gauged = 0.0
        self._gauged_sales: set[str] = set()
        self.per_sale = PerSale("admitter", sale_timeout_seconds)
        self._paces: dict[str, Pace] = {}

    async def run(self, stop: asyncio.Event) -> None:
        log.info("admitter started")
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except Exception:  # no list of sales yet (PostgreSQL): the next tick retries
                    log.exception("admitter tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.tick)
        finally:
            await self.per_sale.close()
        log.info("admitter stopped")

    async def step(self) -> None:
        """One tick: every live sale's pre-warm (when due), batch and gauges, each sale on
        its own."""
        self._live = await self._listing.get()
        now = datetime.now(UTC)
        gauges = time.monotonic() - self._gauged >= self.gauges_every
        if gauges:
            self._gauged = time.monotonic()
            self._forget_gone()
        await self.per_sale.run(
            {sale.id: functools.partial(self._sale_step, sale, now, gauges) for sale in self._live}
        )

    async def _sale_step(self, sale: Sale, now: datetime, gauges: bool) -> None:
        if sale.id not in self._warm and now >= sale.opens_at - timedelta(
            seconds=self.prewarm_lead
        ):
            try:
                await self.prewarm(sale)
            except Exception:  # admission goes on, on whatever stock was loaded before
                log.exception("pre-warm failed", extra={"sale": sale.id})
        await self.admit(sale.id)
        if gauges:
            await self.export_gauges(sale, now)

    async def prewarm(self, sale: Sale) -> None:
        """Load stock ahead of the opening if nothing (the operator, an admin) did: the
        fence makes this a no-op for a sale already warm."""
        if not await self.stock.is_warm(sale.id):
            result = await self.stock.prewarm(sale)
            log.info(
                "pre-warmed",
                extra={
                    "sale": sale.id,
                    "outcome": result["outcome"],
                    "available": result["available"],
                },
            )
        self._warm.add(sale.id)

    async def admit(self, sale_id: str) -> None:
        try:
            result = await self.room.admit_once(sale_id)
        except NoSuchRoom:
            await self.sales.ensure_room(sale_id)
            return
        if result.outcome == "opened":
            log.info("sale opened: pre-queue drawn", extra={"sale": sale_id})
            result = await self.room.admit_once(sale_id)
        if result.outcome == "ok" and (result.admitted or result.skipped):
            ADMITTED.labels(sale_id).inc(result.admitted)
            SKIPPED.labels(sale_id).inc(result.skipped)
            LAST_BATCH.labels(sale_id).set_to_current_time()
            log.info(
                "batch admitted",
                extra={
                    "sale": sale_id,
                    "admitted": result.admitted,
                    "skipped": result.skipped,
                    "frontier": result.frontier,
                },
            )

    def _forget_gone(self) -> None:
        """A sale that left the list (closed) keeps its last stock figures; nobody waits in
        it any more."""
        live = {sale.id for sale in self._live}
        for sale_id in self._gauged_sales - live:
            SALE_OPEN.labels(sale_id).set(0)
            WAITING.labels(sale_id).set(0)
        self._gauged_sales = live
        for sale_id in set(self._paces) - live:
            del self._paces[sale_id]

    async def export_gauges(self, sale: Sale, now: datetime) -> None:
        """Set the sale's gauges from Redis: three round trips."""
        try:
            await self._export_sale(sale, now)
        except Exception:  # metrics must never stop admission
            log.warning(
                "could not read the room for metrics", extra={"sale": sale.id}, exc_info=True
            )

    async def price_joins(self, sale: Sale, counters: Counters) -> None:
        """Raise (or lower back) the proof of work new places cost, from the measured join
        and admission rates (pow.difficulty); admission's own rate before the opening is the
        one the sale's settings allow."""
        if not sale.pow_difficulty or sale.identity_required:
            return
        pace = self._paces.setdefault(sale.id, Pace())
        pace.add(time.monotonic(), counters.joined, counters.admitted_total)
        rates = pace.rates()
        bits = sale.pow_difficulty
        if rates is not None:
            joins, admissions = rates
            if not counters.opened:
                admissions = sale.batch_size * 1000 / sale.batch_interval_ms
            bits = difficulty(sale.pow_difficulty, joins, admissions)
        POW_DIFFICULTY.labels(sale.id).set(bits)
        if bits != counters.pow_difficulty:
            await self.room.set_pow_difficulty(sale.id, bits)
            log.info(
                "proof-of-work difficulty changed",
                extra={"sale": sale.id, "bits": bits, "was": counters.pow_difficulty},
            )

    async def _export_sale(self, sale: Sale, now: datetime) -> None:
        OPENS_AT.labels(sale.id).set(sale.opens_at.timestamp())
        SALE_OPEN.labels(sale.id).set(1 if sale.phase(now) == "open" else 0)
        ACTIVE_LIMIT.labels(sale.id).set(sale.max_active)
        try:
            counters = await self.room.counters(sale.id)
        except NoSuchRoom:
            return
        await self.price_joins(sale, counters)
        WAITING.labels(sale.id).set(counters.waiting)
        ACTIVE.labels(sale.id).set(counters.active)
        SOLD_OUT.labels(sale.id).set(1 if counters.sold_out else 0)
        keys = self.room.keys(sale.id)
        async with self.room.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.inventory, "avail", "held", "sold")
            pipe.zcard(keys.holds)
            (avail, held, sold), holds = await pipe.execute()
        HOLDS_OPEN.labels(sale.id).set(holds)
        if avail is not None:  # warm
            AVAILABLE.labels(sale.id).set(int(avail))
            HELD.labels(sale.id).set(int(held or 0))
            SOLD.labels(sale.id).set(int(sold or 0))
