"""The payment circuit breaker: every way a call can end moves it on, only provider-side
failures count, and only once per order. The provider here is a scripted stand-in for the
PaymentProvider protocol (no Redis, no PostgreSQL: those are never faked; the simulated
provider on real Redis is exercised in tests/integration/test_failure_modes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from flashsale.waiting_room.payments import (
    Charge,
    CircuitBreaker,
    GuardedProvider,
    Outcome,
    PaymentStatus,
    ProviderError,
    ProviderUnavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A PaymentProvider whose next charge does what the test says."""

    def __init__(self) -> None:
        self.next: Callable[[], Awaitable[Charge]] = self.approve
        self.calls = 0

    async def approve(self) -> Charge:
        return Charge(Outcome.APPROVED, "ref")

    async def charge(self, order_id: str, amount_cents: int, currency: str, token: str) -> Charge:
        self.calls += 1
        return await self.next()

    async def status(self, order_id: str) -> PaymentStatus:
        return PaymentStatus.NONE

    async def refund(self, order_id: str) -> None:
        return None


def raising(exc: BaseException) -> Callable[[], Awaitable[Charge]]:
    async def run() -> Charge:
        raise exc

    return run


async def hang() -> Charge:
    await asyncio.sleep(3600)
    raise AssertionError("never answers")


def guarded(threshold: int = 3, timeout_s: float = 1.0) -> tuple[GuardedProvider, Scripted, Clock]:
    clock = Clock()
    provider = Scripted()
    breaker = CircuitBreaker(threshold=threshold, reset_after=10.0, clock=clock)
    return GuardedProvider(provider, breaker, timeout_s=timeout_s), provider, clock


async def open_it(payments: GuardedProvider, provider: Scripted) -> None:
    provider.next = raising(ProviderError("5xx"))
    for n in range(payments.breaker.threshold):
        with pytest.raises(ProviderError):
            await payments.charge(f"open-{n}", 100, "USD", "tok")
    assert payments.breaker.state == "open"


# -- closed -----------------------------------------------------------------------------------


async def test_failures_on_different_orders_open_it_one_order_counts_once() -> None:
    payments, provider, _ = guarded(threshold=3)
    provider.next = raising(ProviderError("5xx"))
    for _ in range(10):  # one shopper retrying one order
        with pytest.raises(ProviderError):
            await payments.charge("same-order", 100, "USD", "tok")
    assert payments.breaker.state == "closed"
    with pytest.raises(ProviderError):
        await payments.charge("second", 100, "USD", "tok")
    assert payments.breaker.state == "closed"
    with pytest.raises(ProviderError):
        await payments.charge("third", 100, "USD", "tok")
    assert payments.breaker.state == "open"
    calls = provider.calls
    with pytest.raises(ProviderUnavailable) as refused:
        await payments.charge("fourth", 100, "USD", "tok")
    assert refused.value.retry_after == 10.0
    assert provider.calls == calls  # open: not called at all


async def test_a_success_starts_the_count_again_and_declines_are_successes() -> None:
    payments, provider, _ = guarded(threshold=2)
    provider.next = raising(ProviderError("5xx"))
    with pytest.raises(ProviderError):
        await payments.charge("a", 100, "USD", "tok")

    async def declined() -> Charge:
        return Charge(Outcome.DECLINED, "ref", "card declined")

    provider.next = declined  # the shopper's card: the provider answered
    assert (await payments.charge("b", 100, "USD", "tok")).outcome is Outcome.DECLINED
    provider.next = raising(ProviderError("5xx"))
    with pytest.raises(ProviderError):
        await payments.charge("c", 100, "USD", "tok")
    assert payments.breaker.state == "closed"  # a, then a success, then c: not two in a row


@pytest.mark.parametrize(
    "failure",
    [
        RedisConnectionError("connection refused"),  # not an OSError
        ConnectionResetError("reset by peer"),
        KeyError("an unexpected bug in the adapter"),
    ],
)
async def test_any_exception_is_a_provider_failure_and_reaches_the_caller_as_one(
    failure: Exception,
) -> None:
    payments, provider, _ = guarded(threshold=2)
    provider.next = raising(failure)
    for order in ("a", "b"):
        with pytest.raises(ProviderError) as raised:
            await payments.charge(order, 100, "USD", "tok")
        assert raised.value.__cause__ is failure
    assert payments.breaker.state == "open"


async def test_a_timeout_is_a_provider_failure() -> None:
    payments, provider, _ = guarded(threshold=1, timeout_s=0.01)
    provider.next = hang
    with pytest.raises(ProviderError) as raised:
        await payments.charge("a", 100, "USD", "tok")
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert payments.breaker.state == "open"


async def test_a_cancelled_call_is_no_failure() -> None:
    payments, provider, _ = guarded(threshold=1)
    provider.next = hang
    call = asyncio.ensure_future(payments.charge("a", 100, "USD", "tok"))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert payments.breaker.state == "closed"


# -- half-open: every end of the trial moves the breaker on ---------------------------------------


async def test_a_successful_trial_closes_it_and_only_one_trial_runs_at_a_time() -> None:
    payments, provider, clock = guarded()
    await open_it(payments, provider)
    clock.now += 10
    assert payments.breaker.state == "half_open"
    gate = asyncio.Event()

    async def slow_success() -> Charge:
        await gate.wait()
        return Charge(Outcome.APPROVED, "ref")

    provider.next = slow_success
    trial = asyncio.ensure_future(payments.charge("trial", 100, "USD", "tok"))
    await asyncio.sleep(0)
    with pytest.raises(ProviderUnavailable):  # the trial is still out
        await payments.charge("other", 100, "USD", "tok")
    gate.set()
    assert (await trial).outcome is Outcome.APPROVED
    assert payments.breaker.state == "closed"
    provider.next = provider.approve
    assert (await payments.charge("after", 100, "USD", "tok")).outcome is Outcome.APPROVED


@pytest.mark.parametrize(
    "failure",
    [ProviderError("5xx"), RedisConnectionError("refused"), RuntimeError("bug"), "timeout"],
)
async def test_a_failed_trial_opens_it_again_for_a_full_period(failure: object) -> None:
    payments, provider, clock = guarded(timeout_s=0.01)
    await open_it(payments, provider)
    clock.now += 10
    provider.next = raising(failure) if isinstance(failure, BaseException) else hang
    with pytest.raises(ProviderError):
        await payments.charge("trial", 100, "USD", "tok")
    assert payments.breaker.state == "open"
    with pytest.raises(ProviderUnavailable) as refused:
        await payments.charge("next", 100, "USD", "tok")
    assert refused.value.retry_after == 10.0
    clock.now += 10  # and it half-opens again: a new trial
    provider.next = provider.approve
    assert (await payments.charge("recovered", 100, "USD", "tok")).outcome is Outcome.APPROVED
    assert payments.breaker.state == "closed"


async def test_a_cancelled_trial_lets_the_next_call_be_the_trial() -> None:
    payments, provider, clock = guarded()
    await open_it(payments, provider)
    clock.now += 10
    provider.next = hang
    trial = asyncio.ensure_future(payments.charge("trial", 100, "USD", "tok"))
    await asyncio.sleep(0.01)
    trial.cancel()  # the shopper went away mid-payment
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert payments.breaker.state == "half_open"
    provider.next = provider.approve
    assert (await payments.charge("next", 100, "USD", "tok")).outcome is Outcome.APPROVED
    assert payments.breaker.state == "closed"


async def test_a_trial_that_never_reports_back_stops_blocking_after_a_period() -> None:
    breaker = CircuitBreaker(threshold=1, reset_after=10.0, clock=(clock := Clock()))
    breaker.failed("a", trial=False)
    clock.now += 10
    assert breaker.admit() is True  # the trial's caller vanishes without a word
    with pytest.raises(ProviderUnavailable):
        breaker.admit()
    clock.now += 10
    assert breaker.admit() is True
    breaker.succeeded(True)
    assert breaker.state == "closed" and breaker.admit() is False
