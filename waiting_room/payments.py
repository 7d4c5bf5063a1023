"""Payment providers and the circuit breaker in front of them.

A provider charges, reports and refunds by order id, and every call is idempotent on it: a
retried charge after a timeout returns the first outcome instead of charging twice, and the
expiry sweeper can ask whether a hold it is about to release was in fact paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from redis.exceptions import RedisError

from flashsale.waiting_room.redis_client import RedisClient, text

T = TypeVar("T")


class Outcome(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"


class PaymentStatus(StrEnum):
    PAID = "paid"
    DECLINED = "declined"
    REFUNDED = "refunded"
    NONE = "none"  # never charged


class ProviderError(Exception):
    """The provider failed or did not answer in time; the outcome is unknown."""


class ProviderUnavailable(ProviderError):
    """The circuit breaker is open: the provider is not being called at all for a while."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"payment provider unavailable; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Charge:
    outcome: Outcome
    reference: str
    reason: str = ""


class PaymentProvider(Protocol):
    async def charge(
        self, order_id: str, amount_cents: int, currency: str, token: str
    ) -> Charge: ...

    async def status(self, order_id: str) -> PaymentStatus: ...

    async def refund(self, order_id: str) -> None: ...


class SimulatedProvider:
    """A payment provider for demos and tests, with its own records in Redis (shared by every
    process, as a real provider's would be).

    The payment token decides what happens: `tok_approve` (or anything else) approves,
    `tok_decline` declines, `tok_timeout` approves but answers too late (the case where money
    moved but the shop never heard), `tok_error` fails without charging. Setting the
    `outage` key makes every call fail, as a provider outage would.

    Each payment's record is a key of its own, hash-tagged by its order, so on a Redis Cluster
    the records spread over every shard with the orders. The outage switch is one key, so it
    is read at most every OUTAGE_CHECK_S by each process (and at once by the process that
    flips it), never by every payment: no single key carries all the payments of all the
    sales, and a shard that is down only takes its own payments' records with it.
    """

    OUTAGE_CHECK_S = 0.5

    def __init__(
        self, redis: RedisClient, prefix: str, *, latency_s: float = 0.0, slow_s: float = 30.0
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:paysim"
        self.latency_s = latency_s
        self.slow_s = slow_s
        self._down = False
        self._checked = float("-inf")  # when the outage switch was last read

    @property
    def outage_key(self) -> str:
        return f"{self.prefix}:outage"

    def _record(self, order_id: str) -> str:
        return f"{self.prefix}:{{{order_id}}}"

    async def set_outage(self, down: bool) -> None:
        if down:
            await self.redis.set(self.outage_key, 1)
        else:
            await self.redis.delete(self.outage_key)
        self._down, self._checked = down, time.monotonic()

    async def forget(self, order_ids: Sequence[str]) -> int:
        """Remove the records of these orders (a demo's clean-up); how many there were."""
        removed = 0
        for start in range(0, len(order_ids), 500):
            chunk = order_ids[start : start + 500]
            removed += await self.redis.unlink(*(self._record(o) for o in chunk))
        return removed

    async def _check_up(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if time.monotonic() - self._checked >= self.OUTAGE_CHECK_S:
            self._checked = time.monotonic()
            with contextlib.suppress(RedisError):  # its shard unreachable: as last known
                self._down = bool(await self.redis.exists(self.outage_key))
        if self._down:
            raise ProviderError("simulated outage")

    # The simulator's own records unreachable (their shard failing over) is the provider
    # failing: the caller cannot know the outcome, as with a real provider that went silent.

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        return await _reached(self._charge(order_id, amount_cents, currency, token))

    async def status(self, order_id: str) -> PaymentStatus:
        return await _reached(self._status(order_id))

    async def refund(self, order_id: str) -> None:
        await _reached(self._refund(order_id))

    async def _charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        await self._check_up()
        if token == "tok_error":
            raise ProviderError("simulated processing error")
        outcome = Outcome.DECLINED if token == "tok_decline" else Outcome.APPROVED
        status = PaymentStatus.PAID if outcome is Outcome.APPROVED else PaymentStatus.DECLINED
        record = self._record(order_id)
        # first outcome wins: a retried charge returns it instead of charging twice
        await self.redis.hsetnx(record, "status", status.value)
        await self.redis.hsetnx(record, "amount", amount_cents)
        await self.redis.expire(record, 7 * 86400)
        stored = PaymentStatus(text(await self.redis.hget(record, "status") or ""))
        if token == "tok_timeout":
            await asyncio.sleep(self.slow_s)
        if stored is PaymentStatus.PAID:
            return Charge(Outcome.APPROVED, reference=f"sim-{order_id}")
        if stored is PaymentStatus.REFUNDED:
            return Charge(Outcome.DECLINED, reference=f"sim-{order_id}", reason="refunded")
        return Charge(Outcome.DECLINED, reference=f"sim-{order_id}", reason="card declined")

    async def _status(self, order_id: str) -> PaymentStatus:
        await self._check_up()
        value = await self.redis.hget(self._record(order_id), "status")
        return PaymentStatus(text(value)) if value else PaymentStatus.NONE

    async def _refund(self, order_id: str) -> None:
        await self._check_up()
        record = self._record(order_id)
        if await self.redis.hget(record, "status") == PaymentStatus.PAID.value:
            await self.redis.hset(record, "status", PaymentStatus.REFUNDED.value)


async def _reached(call: Awaitable[T]) -> T:
    try:
        return await call
    except RedisError as exc:
        raise ProviderError(f"simulated provider unreachable: {exc}") from exc


class CircuitBreaker:
    """Stops calling a failing provider for a while so calls do not pile up.

    Closed: calls pass; `threshold` consecutive failures open it. Open: calls are refused at
    once for `reset_after` seconds. Half-open: one trial call; success closes, failure opens
    again. It guards the payment provider only, never the sale itself.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_after else "open"

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(1.0, self.reset_after - (self.clock() - self.opened_at))

    def before_call(self) -> None:
        state = self.state
        if state == "open" or (state == "half_open" and self._trial):
            raise ProviderUnavailable(self.retry_after())
        if state == "half_open":
            self._trial = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial = False

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()


class GuardedProvider:
    """A provider behind a timeout and a circuit breaker."""

    def __init__(
        self, provider: PaymentProvider, breaker: CircuitBreaker, timeout_s: float
    ) -> None:
        self.provider = provider
        self.breaker = breaker
        self.timeout_s = timeout_s

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        self.breaker.before_call()
        try:
            result = await asyncio.wait_for(make(), self.timeout_s)
        except (ProviderError, TimeoutError, OSError) as exc:
            self.breaker.failure()
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(f"payment provider did not answer: {type(exc).__name__}") from exc
        self.breaker.success()
        return result

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        return await self._call(
            lambda: self.provider.charge(order_id, amount_cents, currency, token)
        )

    async def status(self, order_id: str) -> PaymentStatus:
        return await self._call(lambda: self.provider.status(order_id))

    async def refund(self, order_id: str) -> None:
        await self._call(lambda: self.provider.refund(order_id))


def make_provider(
    name: str, redis: RedisClient, prefix: str, *, latency_ms: int = 0
) -> PaymentProvider:
    """The provider named by FLASHSALE_PAYMENT_PROVIDER."""
    if name == "simulated":
        return SimulatedProvider(redis, prefix, latency_s=latency_ms / 1000)
    raise ValueError(f"unknown payment provider {name!r}; available: simulated")
