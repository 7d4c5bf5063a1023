"""The admitter: lets the next batch of every live sale in when it is due.

Any number of admitters may run; the admission script is atomic and compares the frontier it
was given, so concurrent admitters never admit beyond the limits, they only lose races.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge

from waiting_room.room import NoSuchRoom, WaitingRoom
from waiting_room.sale import Sale
from waiting_room.sales import Sales
from waiting_room.stock import Stock

log = logging.getLogger(__name__)

ADMITTED = Counter("flashsale_admitted", "Shoppers admitted from the waiting room", ["sale"])
SKIPPED = Counter("flashsale_skipped", "Places skipped because the waiter left", ["sale"])
LAST_BATCH = Gauge(
    "flashsale_admitter_last_batch_timestamp_seconds", "When the admitter last let a batch in",
    ["sale"],
)


class Admitter:
    def __init__(self, sales: Sales, room: WaitingRoom, stock: Stock, *, tick_ms: int,
                 refresh_seconds: float, prewarm_lead_seconds: int = 300) -> None:
        self.sales = sales
        self.room = room
        self.stock = stock
        self.prewarm_lead = prewarm_lead_seconds
        self._warm: set[str] = set()
        self.tick = tick_ms / 1000
        self.refresh_seconds = refresh_seconds
        self._live: list[Sale] = []
        self._refreshed = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("admitter started")
        while not stop.is_set():
            try:
                await self.step()
            except Exception:  # a failed tick must not stop admission for every sale
                log.exception("admitter tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)
        log.info("admitter stopped")

    async def step(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh_seconds:
            self._live = await self.sales.live()
            self._refreshed = time.monotonic()
        now = datetime.now(UTC)
        for sale in self._live:
            if sale.id not in self._warm and now >= sale.opens_at - timedelta(
                    seconds=self.prewarm_lead):
                await self.prewarm(sale)
            await self.admit(sale.id)

    async def prewarm(self, sale: Sale) -> None:
        """Load stock ahead of the opening if nothing (the operator, an admin) did: the
        fence makes this a no-op for a sale already warm."""
        if not await self.stock.is_warm(sale.id):
            result = await self.stock.prewarm(sale)
            log.info("pre-warmed", extra={"sale": sale.id, "outcome": result["outcome"],
                                          "available": result["available"]})
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
                extra={"sale": sale_id, "admitted": result.admitted, "skipped": result.skipped,
                       "frontier": result.frontier},
            )
