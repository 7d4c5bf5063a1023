"""Payment providers and the circuit breaker in front of them.

A provider charges, reports and refunds by order id, and every call is idempotent on it: a
retried charge after a timeout returns the first outcome instead of charging twice, and the
expiry sweeper can ask whether a hold it is about to release was in fact paid.

Two kinds of "no" are kept apart. The shopper's input (a declined card, an invalid payment
token) is an answer: the provider is healthy, the charge comes back DECLINED, and the breaker
counts it as a success. The provider's own failures (a 5xx-like ProviderError, a timeout, a
broken connection, anything else the call raises) leave the outcome unknown and are what the
breaker counts, and only on different orders, so no single shopper can open it for everybody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from flashsale.waiting_room.redis_client import RedisClient, text

T = TypeVar("T")
log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"


class PaymentStatus(StrEnum):
    PAID = "paid"
    DECLINED = "declined"
    REFUNDED = "refunded"
    NONE = "none"  # never charged


class ProviderError(Exception):
    """The provider failed or did not answer in time (its side, not the shopper's); the
    outcome is unknown."""


class ProviderUnavailable(ProviderError):
    """The circuit breaker is open: the provider is not being called at all for a while."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"payment provider unavailable; retry in {retry_after:.0f} s")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as its argument, not its message
        return (type(self), (self.retry_after,))


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

    The shopper's payment token decides the answer: `tok_approve` approves, `tok_decline` is a
    declined card, anything else an invalid token (declined too: the shopper's input, answered
    at once, never a failure of the provider). The provider's own failures are its state, not
    a token's, as with a real one: `set_mode("error")` makes every call fail as an outage
    would, `set_mode("slow")` makes every call take `slow_s` (charges go through but the
    answer comes too late: money moved and the shop never heard).

    Each payment's record is a key of its own, hash-tagged by its order, so on a Redis Cluster
    the records spread over every shard with the orders. The mode is one key, so it is read at
    most every MODE_CHECK_S by each process (and at once by the process that changes it),
    never by every payment: no single key carries all the payments of all the sales, and a
    shard that is down only takes its own payments' records with it.
    """

    MODES = ("up", "error", "slow")
    MODE_CHECK_S = 0.5

    def __init__(
        self, redis: RedisClient, prefix: str, *, latency_s: float = 0.0, slow_s: float = 30.0
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:paysim"
        self.latency_s = latency_s
        self.slow_s = slow_s
        self._mode_seen = "up"
        self._checked = float("-inf")  # when the mode key was last read

    @property
    def outage_key(self) -> str:
        return f"{self.prefix}:outage"

    def _record(self, order_id: str) -> str:
        return f"{self.prefix}:{{{order_id}}}"

    async def set_mode(self, mode: str) -> None:
        """`up`, `error` (every call fails) or `slow` (every call answers too late)."""
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        if mode == "up":
            await self.redis.delete(self.outage_key)
        else:
            await self.redis.set(self.outage_key, mode)
        self._mode_seen, self._checked = mode, time.monotonic()

    async def set_outage(self, down: bool) -> None:
        await self.set_mode("error" if down else "up")

    async def forget(self, order_ids: Sequence[str]) -> int:
        """Remove the records of these orders (a demo's clean-up); how many there were."""
        removed = 0
        for start in range(0, len(order_ids), 500):
            chunk = order_ids[start : start + 500]
            removed += await self.redis.unlink(*(self._record(o) for o in chunk))
        return removed

    async def _mode(self) -> str:
        """Waits out the configured latency, fails in an outage; the mode it is in."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if time.monotonic() - self._checked >= self.MODE_CHECK_S:
            self._checked = time.monotonic()
            with contextlib.suppress(RedisError):  # its shard unreachable: as last known
                self._mode_seen = text(await self.redis.get(self.outage_key) or "up")
        if self._mode_seen not in ("up", "slow"):  # "error", or "1" as older versions set it
            raise ProviderError("simulated outage")
        return self._mode_seen

    # The simulator's own records unreachable (their shard failing over) is the provider
    # failing: the caller cannot know the outcome, as with a real provider that went silent.

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        return await _reached(self._charge(order_id, amount_cents, currency, token))

    async def status(self, order_id: str) -> PaymentStatus:
        return await _reached(self._status(order_id))

    async def refund(self, order_id: str) -> None:
        await _reached(self._refund(order_id))

    async def _charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        mode = await self._mode()
        if token == "tok_approve":
            status, reason = PaymentStatus.PAID, ""
        else:
            status = PaymentStatus.DECLINED
            reason = "card declined" if token == "tok_decline" else "invalid payment token"
        record = self._record(order_id)
        # first outcome wins: a retried charge returns it instead of charging twice
        await self.redis.hsetnx(record, "status", status.value)
        await self.redis.hsetnx(record, "amount", amount_cents)
        await self.redis.hsetnx(record, "reason", reason)
        await self.redis.expire(record, 7 * 86400)
        stored, stored_reason = (
            text(v or "") for v in await self.redis.hmget(record, ["status", "reason"])
        )
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        if stored == PaymentStatus.PAID.value:
            return Charge(Outcome.APPROVED, reference=f"sim-{order_id}")
        if stored == PaymentStatus.REFUNDED.value:
            return Charge(Outcome.DECLINED, reference=f"sim-{order_id}", reason="refunded")
        return Charge(Outcome.DECLINED, reference=f"sim-{order_id}", reason=stored_reason or reason)

    async def _status(self, order_id: str) -> PaymentStatus:
        await self._mode()
        value = await self.redis.hget(self._record(order_id), "status")
        return PaymentStatus(text(value)) if value else PaymentStatus.NONE

    async def _refund(self, order_id: str) -> None:
        await self._mode()
        record = self._record(order_id)
        if text(await self.redis.hget(record, "status") or "") == PaymentStatus.PAID.value:
            await self.redis.hset(record, "status", PaymentStatus.REFUNDED.value)


async def _reached(call: Awaitable[T]) -> T:
    try:
        return await call
    except RedisError as exc:
        raise ProviderError(f"simulated provider unreachable: {exc}") from exc


class CircuitBreaker:
    """Stops calling a failing provider for a while, so calls do not pile up behind it.

    Closed: calls pass. Provider-side failures on `threshold` different orders in a row open
    it (a success in between starts the count again); one order failing again and again, as
    a shopper retrying would, counts once. Open: calls are refused at once for `reset_after`
    seconds. Half-open: one trial call at a time, and however it ends, the breaker moves on:
    success closes it; a provider-side failure or any unexpected exception opens it again; a
    cancelled trial (the caller went away) proves nothing either way and lets the next call be
    the trial. A trial that never reports back at all stops blocking after `reset_after`.
    It guards the payment provider only, never the sale itself.
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
        self.failing: set[str] = set()  # orders that failed since the last success
        self.opened_at: float | None = None
        self._trial_since: float | None = None  # when the trial in flight started

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_after else "open"

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(1.0, self.reset_after - (self.clock() - self.opened_at))

    def admit(self) -> bool:
        """Let a call through, or raise ProviderUnavailable; True when the call is the
        half-open trial, whose end must be reported with its `trial` flag."""
        state = self.state
        if state == "closed":
            return False
        now = self.clock()
        trial_busy = self._trial_since is not None and now - self._trial_since < self.reset_after
        if state == "open" or trial_busy:
            raise ProviderUnavailable(self.retry_after())
        self._trial_since = now
        return True

    def succeeded(self, trial: bool) -> None:
        if trial or self.opened_at is None:
            self.failing.clear()
            self.opened_at = None
        if trial:
            self._trial_since = None

    def failed(self, order_id: str, trial: bool) -> None:
        if trial:
            self._trial_since = None
            self.opened_at = self.clock()
            return
        if self.opened_at is not None:
            return  # a call let through before it opened: it is open already
        self.failing.add(order_id)
        if len(self.failing) >= self.threshold:
            self.failing.clear()
            self.opened_at = self.clock()

    def abandoned(self, trial: bool) -> None:
        """The call was cancelled: no verdict on the provider."""
        if trial:
            self._trial_since = None


class GuardedProvider:
    """A provider behind a timeout and a circuit breaker. Every way a call can end is reported
    to the breaker; every failure reaches the caller as a ProviderError."""

    def __init__(
        self, provider: PaymentProvider, breaker: CircuitBreaker, timeout_s: float
    ) -> None:
        self.provider = provider
        self.breaker = breaker
        self.timeout_s = timeout_s

    async def _call(self, order_id: str, make: Callable[[], Awaitable[T]]) -> T:
        trial = self.breaker.admit()
        try:
            result = await asyncio.wait_for(make(), self.timeout_s)
        except Exception as exc:
            self.breaker.failed(order_id, trial)
            if isinstance(exc, ProviderError):
                raise
            if not isinstance(exc, TimeoutError):
                log.warning("payment provider call failed", exc_info=exc)
            raise ProviderError(f"payment provider did not answer: {type(exc).__name__}") from exc
        except BaseException:  # cancelled (or the process is stopping)
            self.breaker.abandoned(trial)
            raise
        self.breaker.succeeded(trial)
        return result

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        return await self._call(
            order_id, lambda: self.provider.charge(order_id, amount_cents, currency, token)
        )

    async def status(self, order_id: str) -> PaymentStatus:
        return await self._call(order_id, lambda: self.provider.status(order_id))

    async def refund(self, order_id: str) -> None:
        await self._call(order_id, lambda: self.provider.refund(order_id))


def make_provider(
    name: str, redis: RedisClient, prefix: str, *, latency_ms: int = 0
) -> PaymentProvider:
    """The provider named by FLASHSALE_PAYMENT_PROVIDER."""
    if name == "simulated":
        return SimulatedProvider(redis, prefix, latency_s=latency_ms / 1000)
    raise ValueError(f"unknown payment provider {name!r}; available: simulated")
