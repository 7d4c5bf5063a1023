"""The core's services built on one process's connections: every role (API, admitter,
persister, operator, command line) composes them the same way, through `Services.build`.

Opening and closing the connections is the wiring's job (flashsale/wiring.py); this module
does no I/O of its own."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.identity import IdentityVerifier
from flashsale.waiting_room.payments import CircuitBreaker, GuardedProvider, make_provider
from flashsale.waiting_room.pow import Proofs
from flashsale.waiting_room.purchase import Purchases
from flashsale.waiting_room.redis_client import RedisClient
from flashsale.waiting_room.refreshed import Refreshed
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import SaleNotFound, Sales
from flashsale.waiting_room.stock import Stock
from flashsale.waiting_room.tokens import Signer

# Unknown sale ids are remembered briefly so a flood of bogus ids cannot reach PostgreSQL.
UNKNOWN_TTL_S = 5.0
SALE_TTL_S = 1.0
_CACHE_LIMIT = 10_000


@dataclass
class Services:
    settings: Settings
    redis: RedisClient
    raw_redis: RedisClient
    pool: asyncpg.Pool
    signer: Signer
    room: WaitingRoom
    sales: Sales
    stock: Stock
    purchases: Purchases
    identity: IdentityVerifier | None  # the shop's identity provider, when one is configured
    proofs: Proofs  # proof-of-work challenges of anonymous sales
    _unknown: dict[str, float] = field(default_factory=dict)
    _sales: dict[str, Refreshed[Sale]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: RedisClient,
        raw_redis: RedisClient,
        pool: asyncpg.Pool,
        *,
        room: WaitingRoom | None = None,
        sales: Sales | None = None,
        payments: GuardedProvider | None = None,
    ) -> Services:
        """Wire every service from connections; one path for the app, CLI roles and tests."""
        signer = room.signer if room else Signer(settings.signing_keys())
        room = room or WaitingRoom(redis, settings, signer)
        sales = sales or Sales(pool, room)
        payments = payments or GuardedProvider(
            make_provider(
                settings.payment_provider,
                redis,
                settings.redis_prefix,
                latency_ms=settings.simulated_payment_latency_ms,
            ),
            CircuitBreaker(
                threshold=settings.breaker_threshold, reset_after=settings.breaker_reset_seconds
            ),
            timeout_s=settings.payment_timeout_seconds,
        )
        stock = Stock(redis, raw_redis, pool, room, payments=payments, clock=room.clock)
        purchases = Purchases(redis, pool, room, stock, payments, clock=room.clock)
        return cls(
            settings,
            redis,
            raw_redis,
            pool,
            signer,
            room,
            sales,
            stock,
            purchases,
            IdentityVerifier.from_settings(settings),
            Proofs(settings.signing_keys(), clock=room.clock),
        )

    async def ensure_room(self, sale_id: str) -> Sale:
        self._check_known(sale_id)
        try:
            return await self.sales.ensure_room(sale_id)
        except SaleNotFound:
            self._remember_unknown(sale_id)
            raise

    async def sale_cached(self, sale_id: str) -> Sale:
        """The sale, re-read from PostgreSQL at most once a second per process, in the
        background (waiting_room/refreshed.py): while PostgreSQL is down or stalled the copy in hand
        serves on (a sale's definition seldom changes), so the hot path, which needs only
        Redis, goes on through an outage without waiting for it."""
        self._check_known(sale_id)
        kept = self._sales.get(sale_id)
        if kept is None:
            if len(self._sales) >= _CACHE_LIMIT:
                self._sales.clear()
            kept = self._sales[sale_id] = Refreshed(
                functools.partial(self.sales.get, sale_id), every=SALE_TTL_S, what="sale"
            )
        try:
            return await kept.get()
        except SaleNotFound:
            self._sales.pop(sale_id, None)
            self._remember_unknown(sale_id)
            raise

    def _check_known(self, sale_id: str) -> None:
        until = self._unknown.get(sale_id)
        if until is not None:
            if until > time.monotonic():
                raise SaleNotFound(sale_id)
            del self._unknown[sale_id]

    def _remember_unknown(self, sale_id: str) -> None:
        if len(self._unknown) >= _CACHE_LIMIT:
            self._unknown.clear()
        self._unknown[sale_id] = time.monotonic() + UNKNOWN_TTL_S

    def forget(self, sale_id: str) -> None:
        """Drop cached knowledge of a sale after an admin change."""
        self._unknown.pop(sale_id, None)
        self._sales.pop(sale_id, None)
